r"""Per-layer forward and backward time of the paper-scale MNIST crVAE's convolutions:
crvae_jax's kernels (conv_impl 'cpu' and 'xla', each compiled with its
`compiled.compiler_options`, as in the model) vs PyTorch channels_last (issue 7).

  pip install -r requirements-torch.txt
  python -m benchmarks.layers_vs_torch --batch=128 --repeats=5

Each row is one convolution of the model at batch 128 (encoder: conv; decoder: 4x4/2
transposed conv 'deconv' and conv), timed as the best of --repeats after a warm-up:
forward alone, and the backward pass (gradients w.r.t. input and kernel) as
(forward + backward) - forward. JAX and PyTorch run in this one process, one after the
other, with a pause between them (PyTorch's OpenMP threads spin for a while after work).
Where the CPU formulation is slower than torch, the model's step is too: the sum over
rows shows how much of the train-step gap the convolutions explain.
"""

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from crvae_jax import host_memory
from crvae_jax import compiled
from crvae_jax.models import fast_conv, layers

# (name, kind, Cin, Cout, H=W of the input, kernel, stride, padding): paper width 32.
LAYERS = (
    ("enc conv5x5/2 1->32 @28", "conv", 1, 32, 28, 5, 2, 3),
    ("enc conv3x3 64->64 @15", "conv", 64, 64, 15, 3, 1, 1),
    ("enc conv3x3/2 64->64 @15", "conv", 64, 64, 15, 3, 2, 1),
    ("enc conv3x3 128->128 @8", "conv", 128, 128, 8, 3, 1, 1),
    ("enc conv3x3/2 128->128 @8", "conv", 128, 128, 8, 3, 2, 1),
    ("enc conv3x3 256->256 @4", "conv", 256, 256, 4, 3, 1, 1),
    ("dec deconv 256->256 @4", "deconv", 256, 256, 4, 4, 2, 1),
    ("dec conv3x3 256->256 @8", "conv", 256, 256, 8, 3, 1, 1),
    ("dec deconv 256->128 @8", "deconv", 256, 128, 8, 4, 2, 1),
    ("dec conv3x3 128->128 @16", "conv", 128, 128, 16, 3, 1, 1),
    ("dec deconv 128->64 @16", "deconv", 128, 64, 16, 4, 2, 2),
    ("dec conv3x3 64->64 @30", "conv", 64, 64, 30, 3, 1, 1),
    ("dec conv3x3 64->1 @30", "conv", 64, 1, 30, 3, 1, 0),
)


def best_ms(fn, repeats: int) -> float:
  fn()
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t)
  return best * 1e3


def jax_times(impl, kind, x, w, s, p, dy, repeats):
  if kind == "conv":
    f = (lambda x, w: fast_conv.conv2d(x, w, s, p)) if impl == "cpu" else (
        lambda x, w: jax.lax.conv_general_dilated(x, w, (s, s), [(p, p)] * 2,
                                                  dimension_numbers=("NHWC", "HWIO", "NHWC")))
  else:
    f = ((lambda x, w: fast_conv.conv_transpose2d(x, w, s, p)) if impl == "cpu"
         else (lambda x, w: layers.conv_transpose_xla(x, w, s, p)))
  opts = compiled.compiler_options(impl)  # as the model's programs compile them
  fwd = jax.jit(f, compiler_options=opts)
  both = jax.jit(lambda x, w, dy: jax.vjp(f, x, w)[1](dy), compiler_options=opts)
  x, w, dy = map(jnp.asarray, (x, w, dy))
  a = best_ms(lambda: fwd(x, w).block_until_ready(), repeats)
  b = best_ms(lambda: jax.block_until_ready(both(x, w, dy)), repeats)
  return a, b  # the vjp re-runs the forward: b is forward + backward


def torch_times(torch, kind, x, w, s, p, dy, repeats):
  """(forward ms, forward + backward ms) in PyTorch."""
  import torch.nn.functional as F
  cl = torch.channels_last
  tx = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=cl).requires_grad_()
  perm = (3, 2, 0, 1) if kind == "conv" else (2, 3, 0, 1)  # OIHW / IOHW
  tw = torch.from_numpy(w).permute(*perm).contiguous(memory_format=cl).requires_grad_()
  tdy = torch.from_numpy(dy).permute(0, 3, 1, 2).contiguous(memory_format=cl)
  f = ((lambda: F.conv2d(tx, tw, stride=s, padding=p)) if kind == "conv" else
       (lambda: F.conv_transpose2d(tx, tw, stride=s, padding=p)))
  with torch.no_grad():
    a = best_ms(f, repeats)
  b = best_ms(lambda: torch.autograd.grad(f(), (tx, tw), tdy), repeats)
  return a, b


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--repeats", type=int, default=5)
  args = p.parse_args()
  import torch
  torch.set_num_threads(os.cpu_count())
  from benchmarks.nll_eval import machine_line
  print(f"# {machine_line()} | torch {torch.__version__}, {torch.get_num_threads()} "
        f"threads, channels_last; batch {args.batch}; best of {args.repeats}; ms")
  print("| layer | fwd cpu | fwd xla | fwd torch | bwd cpu | bwd xla | bwd torch | "
        "fwd+bwd torch / cpu |")
  print("|---|---|---|---|---|---|---|---|")
  rng = np.random.default_rng(0)
  total = np.zeros(6)
  for name, kind, cin, cout, hw, k, s, pad in LAYERS:
    x = rng.standard_normal((args.batch, hw, hw, cin), np.float32)
    w = (rng.standard_normal((k, k, cin, cout)) * 0.05).astype(np.float32)
    out = (hw + 2 * pad - k) // s + 1 if kind == "conv" else (hw - 1) * s + k - 2 * pad
    dy = rng.standard_normal((args.batch, out, out, cout), np.float32)
    cf, cb = jax_times("cpu", kind, x, w, s, pad, dy, args.repeats)
    xf, xb = jax_times("xla", kind, x, w, s, pad, dy, args.repeats)
    time.sleep(0.5)
    tf, tb = torch_times(torch, kind, x, w, s, pad, dy, args.repeats)
    time.sleep(0.5)
    row = np.array([cf, xf, tf, cb - cf, xb - xf, tb - tf])
    total += row
    print(f"| {name} | " + " | ".join(f"{v:.1f}" for v in row) +
          f" | {tb / cb:.2f} |", flush=True)
  print("| **sum** | " + " | ".join(f"{v:.0f}" for v in total) +
        f" | {(total[2] + total[5]) / (total[0] + total[3]):.2f} |")


if __name__ == "__main__":
  host_memory.reexec_with_hugepages()
  main()
