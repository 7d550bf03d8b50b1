r"""torchvision ImageNet checkpoint (.pth) -> .npz for crvae_jax.models.perceptual.

  python -m experiments.convert_torchvision_weights --arch=vgg11 \
      --input=vgg11-8a719046.pth --output=vgg11.npz
  python -m experiments.convert_torchvision_weights --arch=resnet50 \
      --input=resnet50-11ad3fa6.pth --output=resnet50.npz
  # No checkpoint at hand: random (NOT ImageNet) weights in the same format, e.g. for
  # the offline CPU demo; features of a random network, not a pretrained one.
  python -m experiments.convert_torchvision_weights --arch=vgg11 --random_init=0 \
      --output=weights/vgg11_random.npz

Nothing downloads at run time. Get the standard torchvision files on a machine with
internet access and copy them here:
  * the checkpoints themselves:
      https://download.pytorch.org/models/vgg11-8a719046.pth     VGG11 IMAGENET1K_V1
      https://download.pytorch.org/models/resnet50-11ad3fa6.pth  ResNet50 IMAGENET1K_V2
      https://download.pytorch.org/models/resnet50-0676ba61.pth  ResNet50 IMAGENET1K_V1
  * or, with torchvision installed there:
      m = torchvision.models.vgg11(weights="IMAGENET1K_V1")  # or resnet50(weights=...)
      torch.save(m.state_dict(), "vgg11.pth")

The .npz keeps torchvision's state_dict keys (`features.0.weight`,
`layer1.0.bn1.running_mean`, ...) and PyTorch's layouts, as float32;
`perceptual.load_perceptual` maps and transposes them. The script checks that the result
loads before it reports success.

torch is needed only here, and only inside `main`: the library never imports it. The
command line is argparse, not absl, so that importing this module (tests do) defines no
global flags that could clash with another script's.
"""

import argparse
import os
from typing import Mapping

import jax
import numpy as np

from crvae_jax.models import perceptual


def _to_numpy(value) -> np.ndarray:
  """A torch tensor (or anything array-like) -> float32 numpy array."""
  if hasattr(value, "detach"):
    value = value.detach().cpu().numpy()
  return np.asarray(value, dtype=np.float32)


def state_dict_to_npz(state_dict: Mapping, path: str) -> int:
  """Writes `state_dict` (name -> tensor) to `path` as float32 arrays under the same
  keys; a DataParallel 'module.' prefix is dropped. Returns the number of arrays."""
  prefix = "module."
  if state_dict and all(k.startswith(prefix) for k in state_dict):
    state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
  arrays = {k: _to_numpy(v) for k, v in state_dict.items()}
  with open(path, "wb") as f:  # np.savez would append '.npz' to a path without it
    np.savez(f, **arrays)
  return len(arrays)


def _as_state_dict(obj) -> Mapping:
  """torch.load's result -> a state_dict: the dict itself, a checkpoint's
  'state_dict'/'model' entry, or a pickled module's state_dict()."""
  if hasattr(obj, "state_dict"):
    return obj.state_dict()
  for key in ("state_dict", "model"):
    if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
      return obj[key]
  if isinstance(obj, Mapping):
    return obj
  raise ValueError(f"torch.load returned a {type(obj).__name__}, not a state_dict")


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--arch", required=True, choices=sorted(perceptual.NETWORKS))
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--input", help="torchvision .pth checkpoint")
  source.add_argument("--random_init", type=int, metavar="SEED",
                      help="write torchvision-initialised random weights (not "
                      "pretrained) instead; no torch needed")
  parser.add_argument("--output", required=True, help=".npz to write")
  parser.add_argument("--allow_pickle", action="store_true",
                      help="load a pickled full model (torch.load weights_only=False, "
                      "which runs code from the file: only for files you trust; needs "
                      "torchvision installed)")
  args = parser.parse_args(argv)
  if os.path.dirname(args.output):
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
  if args.random_init is not None:
    _, variables = perceptual.init_random(args.arch, jax.random.key(args.random_init))
    count = state_dict_to_npz(perceptual.to_state_dict(variables), args.output)
    perceptual.load_perceptual(args.arch, args.output)  # checks it fits
    print(f"wrote {count} arrays of RANDOM (not pretrained) {args.arch} weights, seed "
          f"{args.random_init}, to {args.output}")
    return

  import torch  # pylint: disable=g-import-not-at-top
  obj = torch.load(args.input, map_location="cpu", weights_only=not args.allow_pickle)
  count = state_dict_to_npz(_as_state_dict(obj), args.output)
  model, variables = perceptual.load_perceptual(args.arch, args.output)  # checks it fits
  size = sum(np.size(x) for x in jax.tree.leaves(variables))
  print(f"wrote {count} arrays to {args.output}; {args.arch} up to {model.layer} loads "
        f"({size:,} numbers used)")


if __name__ == "__main__":
  main()
