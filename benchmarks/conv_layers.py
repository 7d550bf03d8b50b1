"""Benchmark: XLA's NHWC conv vs crvae_jax.models.fast_conv.conv2d on CPU.

For each layer shape prints forward / dW / dX / full fwd+bwd wall time (ms,
best of --repeats, reference and fast timed alternately) and the speed-up.

  python benchmarks/conv_layers.py --batch 128 --repeats 5
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from crvae_jax.models.fast_conv import conv2d

# (Cin, Cout, H=W, K, stride, padding)
SHAPES = [
    (64, 64, 30, 3, 1, 1),
    (128, 128, 16, 3, 1, 1),
    (64, 64, 15, 3, 1, 1),
    (256, 256, 8, 3, 1, 1),
    (64, 1, 30, 3, 1, 0),
    (64, 64, 30, 3, 2, 1),   # strided
    (32, 64, 28, 5, 2, 2),   # strided, K=5
]


def reference(x, w, stride, padding):
  return lax.conv_general_dilated(x, w, (stride, stride), [(padding, padding)] * 2,
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def make_ops(conv, stride, padding):
  """jitted (forward, dW, dX, full fwd+bwd) functions of (x, w, dy)."""
  f = lambda x, w: conv(x, w, stride, padding)
  fwd = lambda x, w, dy: f(x, w)
  dw = lambda x, w, dy: jax.vjp(lambda w_: f(x, w_), w)[1](dy)[0]
  dx = lambda x, w, dy: jax.vjp(lambda x_: f(x_, w), x)[1](dy)[0]
  full = lambda x, w, dy: jax.grad(lambda x_, w_: jnp.vdot(f(x_, w_), dy), (0, 1))(x, w)
  return [jax.jit(g) for g in (fwd, dw, dx, full)]


def best_times(fns, args, repeats):
  """Min wall time (ms) of each fn, alternating between fns every repeat."""
  for fn in fns:
    jax.block_until_ready(fn(*args))  # compile + warm up
  best = [float('inf')] * len(fns)
  for _ in range(repeats):
    for i, fn in enumerate(fns):
      t = time.perf_counter()
      jax.block_until_ready(fn(*args))
      best[i] = min(best[i], (time.perf_counter() - t) * 1e3)
  return best


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  names = ('fwd', 'dW', 'dX', 'fwd+bwd')
  print(f'batch {args.batch}, best of {args.repeats}, ms: reference -> conv2d (speed-up)')
  print(f'{"Cin->Cout HxW K s p":<24}' + ''.join(f'{n:>24}' for n in names))
  for cin, cout, hw, k, stride, padding in SHAPES:
    x = jnp.asarray(rng.standard_normal((args.batch, hw, hw, cin)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((k, k, cin, cout)) * 0.05, jnp.float32)
    ho = (hw + 2 * padding - k) // stride + 1
    dy = jnp.asarray(rng.standard_normal((args.batch, ho, ho, cout)), jnp.float32)
    ref_ops = make_ops(reference, stride, padding)
    new_ops = make_ops(conv2d, stride, padding)
    cells = []
    for r_op, n_op in zip(ref_ops, new_ops):
      tr, tn = best_times([r_op, n_op], (x, w, dy), args.repeats)
      cells.append(f'{tr:7.0f} ->{tn:6.0f} ({tr / tn:4.1f}x)')
    label = f'{cin}->{cout} {hw}x{hw} K{k} s{stride} p{padding}'
    print(f'{label:<24}' + ''.join(f'{c:>24}' for c in cells), flush=True)


if __name__ == '__main__':
  main()
