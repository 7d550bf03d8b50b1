"""The benchmark FLOP counter: known counts for dense, scanned, conv and transposed conv."""

import jax
import jax.numpy as jnp
from jax import lax

from benchmarks.flops import count_flops


def test_dense_and_scan_counts():
  x, w = jnp.ones((5, 7)), jnp.ones((7, 3))
  assert count_flops(lambda x, w: x @ w, x, w) == 2 * 5 * 7 * 3
  # A scan body counts once per step (XLA's cost_analysis would count it once).
  scanned = lambda x, w: lax.scan(lambda c, _: (c, c @ w), x, None, length=4)[1]
  assert count_flops(jax.jit(scanned), x, w) == 4 * 2 * 5 * 7 * 3


def test_conv_and_transposed_conv_counts():
  x, k = jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 4))  # NHWC, HWIO
  conv = lambda x, k: lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                               dimension_numbers=("NHWC", "HWIO", "NHWC"))
  assert count_flops(conv, x, k) == 2 * (2 * 8 * 8 * 4) * (3 * 3 * 3)
  # Transposed conv, stride 2: only products with real input pixels count
  # (each input element meets k*k taps and Cout outputs), not the inserted zeros.
  kt = jnp.ones((4, 4, 3, 5))
  tconv = lambda x, k: lax.conv_transpose(x, k, (2, 2), "SAME",
                                          dimension_numbers=("NHWC", "HWIO", "NHWC"))
  assert count_flops(tconv, x, kt) == 2 * (2 * 8 * 8 * 3) * (4 * 4) * 5


def test_gradient_of_a_transposed_conv_counts_real_products_only():
  # Forward 2*N*H*W*Cin*k*k*Cout; each of the two gradients costs the same again.
  x, kt = jnp.ones((2, 8, 8, 3)), jnp.ones((4, 4, 3, 5))
  tconv = lambda x, k: lax.conv_transpose(x, k, (2, 2), "SAME",
                                          dimension_numbers=("NHWC", "HWIO", "NHWC")).sum()
  forward = 2 * (2 * 8 * 8 * 3) * (4 * 4) * 5
  assert count_flops(jax.grad(tconv, argnums=(0, 1)), x, kt) == 3 * forward
