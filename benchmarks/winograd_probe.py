r"""Would Winograd convolutions written in JAX beat oneDNN's direct ones on this CPU?

Doing fewer FLOPs than PyTorch's CPU convolutions needs Winograd's algorithm, which
oneDNN 3.2 (conv_impl 'onednn') does not offer for f32 on these CPUs (issue 22). This
probe writes F(2x2, 3x3) in plain JAX (input tiles of 4x4 taken every 2 pixels, the
B^T d B / G g G^T / A^T m A transforms of Lavin & Gray, "Fast Algorithms for
Convolutional Neural Networks", 2016, and 16 batched matrix products in between, which
XLA runs) for the stride-1, padding-1 3x3 convolutions of the paper-scale MNIST crVAE,
and times it against the oneDNN FFI convolution the model uses:

  python -m benchmarks.winograd_probe --repeats=5

Per layer (batch 128, NHWC): the largest difference of the outputs (a check that the
transforms are right), the forward of each, forward + backward (jax.grad of a squared
sum w.r.t. input and kernel; autodiff of the Winograd form keeps the backward in the
Winograd domain), and the 16 matrix products alone, timed on random inputs of their
shapes (the part that does 2.25x fewer FLOPs than the direct convolution at even sizes;
at odd ones the 2x2 output tiles overhang by a row and a column, e.g. 1.98x fewer at
15x15). Best of --repeats, ms. Not used by any model: a measurement of an option
(benchmarks/RESULTS.md, issue 22).
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.layers_vs_torch import best_ms
from benchmarks.nll_eval import machine_line
from crvae_jax import host_memory
from crvae_jax.models import onednn_conv

B_T = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float32)
G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], np.float32)
A_T = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float32)
# (H = W, C_in, C_out) of the crVAE's 3x3 stride-1 convolutions at paper scale
LAYERS = ((30, 64, 64), (16, 128, 128), (8, 256, 256), (15, 64, 64), (8, 128, 128),
          (4, 256, 256), (4, 64, 256))


def _combine(terms):
  """sum(coef * array) over (coef, array) with the zero coefficients left out."""
  out = None
  for coef, a in terms:
    if coef:
      a = a if coef == 1 else -a if coef == -1 else coef * a
      out = a if out is None else out + a
  return out


def winograd_conv3x3(x, kernel):
  """Stride 1, padding 1 convolution of x [N, H, W, C] with an HWIO kernel [3, 3, C, O]."""
  n, h, w, c = x.shape
  o = kernel.shape[-1]
  th, tw = (h + 1) // 2, (w + 1) // 2  # output tiles of 2x2
  xp = jnp.pad(x, ((0, 0), (1, 2 * th + 1 - h), (1, 2 * tw + 1 - w), (0, 0)))
  taps = [[xp[:, i:i + 2 * th:2, j:j + 2 * tw:2] for j in range(4)] for i in range(4)]
  # [4*4, N*th*tw, C]: B^T d B for every tile
  v = jnp.stack([_combine([(B_T[a, i] * B_T[b, j], taps[i][j])
                           for i in range(4) for j in range(4)])
                 for a in range(4) for b in range(4)]).reshape(16, n * th * tw, c)
  u = jnp.einsum("ai,ijco,bj->abco", G, kernel, G).reshape(16, c, o)  # G g G^T
  m = products(v, u).reshape(4, 4, n, th, tw, o)
  y = jnp.stack([jnp.stack([_combine([(A_T[p, a] * A_T[q, b], m[a, b])
                                      for a in range(4) for b in range(4)])
                            for q in range(2)], axis=3)
                 for p in range(2)], axis=2)  # [N, th, 2, tw, 2, O]
  return y.reshape(n, 2 * th, 2 * tw, o)[:, :h, :w]


def products(v, u):
  """The 16 matrix products [16, M, C] x [16, C, O] -> [16, M, O]."""
  return jnp.einsum("tmc,tco->tmo", v, u)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--repeats", type=int, default=5)
  args = p.parse_args()
  reason = onednn_conv.unavailable_reason()
  if reason:
    raise SystemExit(f"winograd_probe compares with conv_impl 'onednn', which is "
                     f"unavailable here: {reason}")
  print(f"# {machine_line()}")
  print(f"# command: python -m benchmarks.winograd_probe --batch={args.batch} "
        f"--repeats={args.repeats}")
  print(f"# Winograd F(2x2,3x3) in JAX vs the oneDNN FFI convolution; batch {args.batch}; "
        f"best of {args.repeats}; ms")
  print("| layer | max abs diff | fwd winograd | fwd onednn | fwd+bwd winograd | "
        "fwd+bwd onednn | 16 products alone | fwd onednn / winograd |")
  print("|---|---|---|---|---|---|---|---|")
  rng = np.random.default_rng(0)
  impls = {"w": winograd_conv3x3, "d": lambda x, k: onednn_conv.conv2d(x, k, 1, 1)}
  for size, c, o in LAYERS:
    x = jnp.asarray(rng.standard_normal((args.batch, size, size, c)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((3, 3, c, o)) / np.sqrt(9 * c), jnp.float32)
    fwd = {name: jax.jit(f) for name, f in impls.items()}
    both = {name: jax.jit(jax.grad(lambda x, k, f=f: jnp.sum(f(x, k) ** 2), argnums=(0, 1)))
            for name, f in impls.items()}
    diff = float(jnp.max(jnp.abs(fwd["w"](x, k) - fwd["d"](x, k))))
    tiles = args.batch * ((size + 1) // 2) ** 2
    v = jnp.asarray(rng.standard_normal((16, tiles, c)), jnp.float32)
    u = jnp.asarray(rng.standard_normal((16, c, o)), jnp.float32)
    timed = lambda f, *a: best_ms(lambda: jax.block_until_ready(f(*a)), args.repeats)
    t = {name: timed(f, x, k) for name, f in fwd.items()}
    tb = {name: timed(f, x, k) for name, f in both.items()}
    tp = timed(jax.jit(products), v, u)
    print(f"| conv3x3 {c}->{o} @{size} | {diff:.1e} | {t['w']:.1f} | {t['d']:.1f} | "
          f"{tb['w']:.1f} | {tb['d']:.1f} | {tp:.1f} | {t['d'] / t['w']:.2f} |", flush=True)


if __name__ == "__main__":
  host_memory.reexec_with_hugepages()
  main()
