"""Frozen ImageNet feature networks for the Stage2 perceptual loss (docs/models.md, section 6).

The Stage2 generator minimises gamma * ||f(S(x)) - f(G(x~))||^2 with f a pretrained CNN:
VGG11 for Birds/CelebA, ResNet50 for LSUN bedrooms. Both are torchvision's networks
rebuilt in Linen (NHWC) so that torchvision's ImageNet weights load into them unchanged:

  VGG11Features     vgg11 (no BN) `features`, cut after a ReLU (default relu4_2).
  ResNet50Features  resnet50 v1.5 (stride in each bottleneck's 3x3 conv, as torchvision),
                    BN in inference mode, cut after a stage (default layer2).

Where to cut. Both defaults are mid-level features at stride 8 (16x16 for a 128x128
Stage2 image, 28x28 for 224x224): deep enough to be invariant to the pixel-exact
placement a GAN cannot match, shallow enough to keep the spatial layout and textures
that make the upsampled image sharp (as in Johnson et al. 2016 and the VGG content loss
of SRGAN). relu4_2 is VGG11's last conv of block 4 (512 channels); ResNet50's layer2
output (512 channels) is the ResNet stage at the same stride. The cut is the module
attribute `layer`; other choices are listed in VGG11_LAYERS / RESNET50_LAYERS.

Inputs are images [B, H, W, 3] in [-1, 1] (the generators' tanh range); the networks
map them to [0, 1] and apply torchvision's ImageNet mean/std themselves. Every strided
conv and pool pads explicitly, exactly as PyTorch does (maxpool 3x3/2 pad 1 pads with
-inf), so features match torchvision's to float rounding (tests/test_perceptual.py).

Weights cannot be downloaded at run time: `load_perceptual` reads an .npz of a
torchvision state_dict written by experiments/convert_torchvision_weights.py.
"""

import os
from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CONVERTER = "python -m experiments.convert_torchvision_weights"

# torchvision vgg11 (config "A"): channels per conv, "M" = maxpool 2x2/2. Index i of
# `features` is conv i, the next index its ReLU, and each "M" one index.
VGG11_CONFIG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")
# ReLU name -> index in torchvision's `features` (the cut keeps features[:index + 1]).
VGG11_LAYERS = {"relu1_1": 1, "relu2_1": 4, "relu3_1": 7, "relu3_2": 9, "relu4_1": 12,
                "relu4_2": 14, "relu5_1": 17, "relu5_2": 19}
# (planes, blocks, stride) of torchvision resnet50's layer1..layer4.
RESNET50_STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))
RESNET50_LAYERS = ("stem", "layer1", "layer2", "layer3", "layer4")


class PerceptualWeightsError(ValueError):
  """The perceptual network's weights file is missing, unreadable or does not fit."""


def imagenet_normalize(x: jax.Array) -> jax.Array:
  """Images in [-1, 1] -> torchvision's input: (x01 - mean) / std, x01 in [0, 1]."""
  x01 = (x + 1.0) * 0.5
  return (x01 - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)


def _conv(features: int, kernel: int, stride: int = 1, padding: int = 0,
          use_bias: bool = False, name: Optional[str] = None) -> nn.Conv:
  """Conv with PyTorch's symmetric padding in pixels and torchvision's init (Kaiming
  normal, fan_out), which only matters for `init_random`."""
  return nn.Conv(features, (kernel, kernel), (stride, stride),
                 padding=((padding, padding), (padding, padding)), use_bias=use_bias,
                 kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
                 name=name)


def _bn(name: str) -> nn.BatchNorm:
  """Inference-mode BN with PyTorch's eps: normalises with the running statistics."""
  return nn.BatchNorm(use_running_average=True, epsilon=1e-5, name=name)


class VGG11Features(nn.Module):
  """torchvision vgg11 `features` up to the ReLU `layer`: [B, H, W, 3] in [-1, 1] ->
  [B, H/s, W/s, C] (relu4_2: s = 8, C = 512).

  Submodule `features_i` is torchvision's `features.i` (state_dict key
  `features.i.weight`).
  """
  layer: str = "relu4_2"

  @nn.compact
  def __call__(self, x):
    if self.layer not in VGG11_LAYERS:
      raise ValueError(f"VGG11Features.layer must be one of {tuple(VGG11_LAYERS)}, "
                       f"got {self.layer!r}")
    cut = VGG11_LAYERS[self.layer]
    x = imagenet_normalize(x)
    index = 0
    for item in VGG11_CONFIG:
      if item == "M":
        x = nn.max_pool(x, (2, 2), (2, 2))  # halves H and W (floor, as PyTorch)
        index += 1
      else:
        x = nn.relu(_conv(item, 3, 1, 1, use_bias=True, name=f"features_{index}")(x))
        index += 2
      if index > cut:
        return x
    raise AssertionError("unreachable: every VGG11_LAYERS index is inside the config")


class Bottleneck(nn.Module):
  """torchvision's Bottleneck (v1.5: the stride sits in the 3x3 conv):
  relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x))))))))) + downsample(x)) with the
  sum inside the last ReLU; downsample = conv1x1/stride + BN when the shape changes."""
  planes: int
  stride: int = 1
  downsample: bool = False

  @nn.compact
  def __call__(self, x):
    p = self.planes
    h = nn.relu(_bn("bn1")(_conv(p, 1, name="conv1")(x)))
    h = nn.relu(_bn("bn2")(_conv(p, 3, self.stride, 1, name="conv2")(h)))
    h = _bn("bn3")(_conv(4 * p, 1, name="conv3")(h))  # [B, H/s, W/s, 4p]
    if self.downsample:
      x = _bn("downsample_1")(_conv(4 * p, 1, self.stride, name="downsample_0")(x))
    return nn.relu(h + x)


class ResNet50Features(nn.Module):
  """torchvision resnet50 up to the output of stage `layer`: [B, H, W, 3] in [-1, 1] ->
  [B, H/s, W/s, C] (layer2: s = 8, C = 512; stem and layer1: s = 4, C = 64 / 256;
  layer3: 16, 1024; layer4: 32, 2048). BN uses the running statistics.

  Submodules carry torchvision's names with '.' -> '_' (`layer1_0/downsample_0` is
  `layer1.0.downsample.0`).
  """
  layer: str = "layer2"

  @nn.compact
  def __call__(self, x):
    if self.layer not in RESNET50_LAYERS:
      raise ValueError(f"ResNet50Features.layer must be one of {RESNET50_LAYERS}, "
                       f"got {self.layer!r}")
    x = imagenet_normalize(x)
    x = nn.relu(_bn("bn1")(_conv(64, 7, 2, 3, name="conv1")(x)))  # [B, H/2, W/2, 64]
    # PyTorch's MaxPool2d(3, 2, padding=1): reduce_window pads with -inf.
    x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))  # [B, H/4, W/4, 64]
    if self.layer == "stem":
      return x
    for stage, (planes, blocks, stride) in enumerate(RESNET50_STAGES, start=1):
      for block in range(blocks):
        first = block == 0  # the first block changes the width (and the stride)
        x = Bottleneck(planes, stride if first else 1, downsample=first,
                       name=f"layer{stage}_{block}")(x)
      if self.layer == f"layer{stage}":
        return x
    raise AssertionError("unreachable: every RESNET50_LAYERS stage is built")


NETWORKS = {"vgg11": VGG11Features, "resnet50": ResNet50Features}


def make_network(name: str, layer: Optional[str] = None) -> nn.Module:
  """NETWORKS[name] cut at `layer` (None: the module's documented default)."""
  if name not in NETWORKS:
    raise PerceptualWeightsError(
        f"unknown perceptual network {name!r}; known: {tuple(NETWORKS)}")
  return NETWORKS[name]() if layer is None else NETWORKS[name](layer=layer)


def init_random(name: str, rng: jax.Array, image_size: int = 64,
                layer: Optional[str] = None) -> tuple[nn.Module, dict]:
  """(module, variables) with random weights (torchvision's init, BN statistics 0 / 1):
  for tests and for runs that never use the perceptual term (gamma 0)."""
  model = make_network(name, layer)
  x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  return model, jax.jit(model.init)(rng, x)  # one program, not one per layer


def torch_key(path: tuple[str, ...]) -> str:
  """Flax variable path -> torchvision state_dict key, e.g.
  ('batch_stats', 'layer1_0', 'downsample_1', 'mean')
  -> 'layer1.0.downsample.1.running_mean'.
  Module names hold no '_' other than the one standing for torchvision's '.'."""
  collection, *modules, leaf = path
  leaf = {("params", "kernel"): "weight", ("params", "scale"): "weight",
          ("params", "bias"): "bias", ("batch_stats", "mean"): "running_mean",
          ("batch_stats", "var"): "running_var"}[(collection, leaf)]
  return ".".join([m.replace("_", ".") for m in modules] + [leaf])


def _torch_shape(flax_shape: tuple[int, ...]) -> tuple[int, ...]:
  """A conv kernel is HWIO in Flax and OIHW in PyTorch; everything else is the same."""
  if len(flax_shape) == 4:
    kh, kw, cin, cout = flax_shape
    return (cout, cin, kh, kw)
  return tuple(flax_shape)


def to_state_dict(variables: dict) -> dict[str, np.ndarray]:
  """Flax variables -> torchvision-keyed arrays in PyTorch layout (the inverse of
  `load_perceptual`'s mapping): how a randomly initialised network is written out."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(variables)
  out = {}
  for path, value in leaves:
    value = np.asarray(value, np.float32)
    out[torch_key(tuple(p.key for p in path))] = (
        value.transpose(3, 2, 0, 1) if value.ndim == 4 else value)  # HWIO -> OIHW
  return out


def load_perceptual(name: str, path: str,
                    layer: Optional[str] = None) -> tuple[nn.Module, dict]:
  """(module, variables) of network `name` with the torchvision weights in `path`.

  `path` is an .npz keyed by torchvision state_dict names with arrays in PyTorch layout
  (experiments/convert_torchvision_weights.py writes it). Only the keys the truncated
  network uses are read; the rest (classifier, deeper stages, num_batches_tracked) is
  ignored. Raises PerceptualWeightsError naming the missing file, missing keys or the
  key whose shape does not fit.
  """
  model = make_network(name, layer)
  if not os.path.exists(path):
    raise PerceptualWeightsError(
        f"perceptual weights file {path!r} does not exist. Convert torchvision's {name} "
        f"ImageNet checkpoint on any machine with torch: {CONVERTER} --arch={name} "
        f"--input=<{name} .pth> --output={path} (its docstring says where the .pth "
        f"files come from).")
  try:
    with np.load(path, allow_pickle=False) as npz:
      arrays = {k: npz[k] for k in npz.files}
  except Exception as e:  # zipfile/pickle/ValueError: anything that is not an npz
    raise PerceptualWeightsError(
        f"cannot read {path!r} as an .npz of weights ({type(e).__name__}: {e}); write "
        f"it with {CONVERTER}") from e
  # Shapes do not depend on the image size; eval_shape allocates nothing.
  expected = jax.eval_shape(model.init, jax.random.key(0),
                            jnp.zeros((1, 64, 64, 3), jnp.float32))
  leaves, treedef = jax.tree_util.tree_flatten_with_path(expected)
  keys = [torch_key(tuple(p.key for p in path_)) for path_, _ in leaves]
  missing = [k for k in keys if k not in arrays]
  if missing:
    raise PerceptualWeightsError(
        f"{path!r} lacks {len(missing)} of the {len(keys)} arrays {name} "
        f"(layer {model.layer}) needs, e.g. {missing[:5]}; is it a torchvision {name} "
        f"state_dict converted with {CONVERTER}?")
  values = []
  for key, (_, leaf) in zip(keys, leaves):
    want = _torch_shape(leaf.shape)
    got = arrays[key].shape
    if got != want:
      raise PerceptualWeightsError(
          f"{path!r}: {key} has shape {got}, {name} needs {want} (PyTorch layout)")
    value = arrays[key].astype(np.float32)
    values.append(jnp.asarray(value.transpose(2, 3, 1, 0) if value.ndim == 4 else value))
  return model, jax.tree_util.tree_unflatten(treedef, values)


def frozen_features(model: nn.Module,
                    variables: dict) -> Callable[[jax.Array], jax.Array]:
  """x [B, H, W, 3] in [-1, 1] -> features [B, h, w, C] of the frozen network:
  gradients flow to x, never to the weights (stop_gradient on `variables`).

  Build it inside the jitted step from variables passed in as an argument: closing over
  concrete arrays would bake the weights (25M for ResNet50) into the program as
  constants."""
  frozen = jax.lax.stop_gradient(variables)
  return lambda x: model.apply(frozen, x)


def perceptual_distance(features_fn: Callable[[jax.Array], jax.Array], a: jax.Array,
                        b: jax.Array) -> jax.Array:
  """||f(a) - f(b)||^2 / (h*w*C) per image: the mean squared feature difference, [B].

  Dividing by the feature size keeps gamma (1 for VGG11, 10 for ResNet50) independent
  of image size and cut layer. a and b ([B, H, W, 3] in [-1, 1]) go through the
  network as one batch (BN is in inference mode, so the halves do not interact);
  stop_gradient a when it is the fixed target S(x).
  """
  f = features_fn(jnp.concatenate([a, b], axis=0))  # [2B, h, w, C]
  fa, fb = jnp.split(f, 2, axis=0)  # [B, h, w, C] each
  return jnp.mean(jnp.square(fa - fb), axis=(1, 2, 3))
