"""fast_conv.conv2d must match lax.conv_general_dilated and its gradients, also when
compiled with the CPU compiler options the train steps use."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from crvae_jax import compiled
from crvae_jax.models.fast_conv import conv2d


def _ref(x, w, stride, padding):
  return lax.conv_general_dilated(
      x, w, (stride, stride), [(padding, padding)] * 2,
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


# (batch, H, W, Cin, Cout, K, stride, padding)
CASES = [
    (2, 7, 7, 3, 4, 3, 1, 1),
    (3, 9, 6, 2, 5, 3, 2, 0),
    (2, 6, 7, 3, 2, 3, 1, 3),
    (2, 9, 8, 2, 3, 5, 1, 2),
    (2, 11, 11, 2, 9, 5, 2, 3),
    (2, 7, 7, 1, 4, 3, 1, 1),   # Cin = 1
    (2, 8, 8, 4, 1, 3, 2, 2),   # Cout = 1 (matmul + shift-add path)
    (5, 9, 9, 1, 1, 5, 2, 1),   # Cin = Cout = 1, odd batch
    (4, 6, 6, 16, 12, 3, 1, 1),  # Cout >= 8: XLA forward path
]


@pytest.mark.parametrize('b,h,w,cin,cout,k,stride,padding', CASES)
def test_forward_and_grads_match_reference(b, h, w, cin, cout, k, stride,
                                           padding):
  rng = np.random.default_rng(0)  # (numpy: jax.random compiles slowly on CPU)
  x = jnp.asarray(rng.standard_normal((b, h, w, cin)), jnp.float32)
  kern = jnp.asarray(rng.standard_normal((k, k, cin, cout)), jnp.float32)

  y_ref, vjp_ref = jax.vjp(lambda a, b_: _ref(a, b_, stride, padding), x, kern)
  dy = jnp.asarray(rng.standard_normal(y_ref.shape), jnp.float32)

  @functools.partial(jax.jit, compiler_options=compiled.compiler_options('cpu'))
  def fast(a, b_, dy):
    y, vjp = jax.vjp(lambda a, b_: conv2d(a, b_, stride, padding), a, b_)
    return (y,) + vjp(dy)

  for out, out_ref in zip(fast(x, kern, dy), (y_ref,) + vjp_ref(dy)):
    assert out.shape == out_ref.shape and out.dtype == out_ref.dtype
    np.testing.assert_allclose(out, out_ref, rtol=1e-5, atol=1e-4)


def test_jitted_grad_of_loss_matches_reference():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((2, 6, 6, 2)), jnp.float32)
  kern = jnp.asarray(rng.standard_normal((3, 3, 2, 3)), jnp.float32)
  loss = lambda a, b: jnp.sum(conv2d(a, b, 1, 1) ** 2)
  ref = lambda a, b: jnp.sum(_ref(a, b, 1, 1) ** 2)
  for g, g_ref in zip(jax.jit(jax.grad(loss, (0, 1)))(x, kern),
                      jax.grad(ref, (0, 1))(x, kern)):
    np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-3)


def test_compiler_options_are_a_platform_switch():
  # 'cpu' kernels get XLA's own CPU convs (a DebugOptions field this jax must accept:
  # the jit in test_forward_and_grads_match_reference compiles with it); 'xla' (the
  # GPU/TPU path) keeps XLA's defaults.
  assert compiled.compiler_options('xla') is None
  opts = compiled.compiler_options('cpu')
  assert 'INDIVIDUAL_CONVOLUTION' not in opts['xla_cpu_experimental_ynn_fusion_type']
  assert compiled.compiler_options('auto') == (opts if jax.default_backend() == 'cpu'
                                               else None)
