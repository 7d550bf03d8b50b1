"""Hand-written backward passes (custom VJPs) for the LSTM recurrence and training-mode
BatchNorm, selected by `model.fused_backward` (the configs' default; the same values as
autodiff to float rounding, not bit for bit).

- `lstm_recurrence`: autodiff of the scanned cell accumulates the recurrent kernel's
  gradient as T small matmuls [H, B] x [B, 4H], one per step; here the backward scan
  only carries the gate gradients, and the kernel gradient is one matmul over all T*B
  rows.
- `batch_norm_train`: the textbook BatchNorm backward, two reductions (sum dy and
  sum dy * x_hat) and one element-wise pass, instead of autodiff through E[x^2] - E[x]^2.
  Over a device axis the two sums are added over devices (synchronised BatchNorm), as
  autodiff through the statistics' `pmean` does.

`cotangent_like` is shared with `onednn_conv`: inside `shard_map` a custom VJP must
return each cotangent varying over exactly the mesh axes its primal varies over.
"""

import functools
from typing import Optional

import jax
import jax.numpy as jnp


def cotangent_like(cotangent, primal):
  """The cotangent of `primal` summed over the mesh axes it varies over and `primal`
  does not (a replicated kernel used by every device: its gradient is the sum)."""
  extra = tuple(jax.typeof(cotangent).mat.varying - jax.typeof(primal).mat.varying)
  return jax.lax.psum(cotangent, extra) if extra else cotangent


# ----------------------------------------------------------------------------- LSTM


@jax.custom_vjp
def lstm_recurrence(gates_x, recurrent_kernel):
  """Hidden states [T, B, H] of an LSTM layer from zero state; gates_x = x_t W_x + b,
  [T, B, 4H] (gate order i, f, g, o); recurrent_kernel [H, 4H]. The forward is
  `lstm.lstm_cell`'s arithmetic."""
  return _lstm_fwd(gates_x, recurrent_kernel)[0]


def _lstm_fwd(gates_x, w_h):
  hidden = w_h.shape[0]
  zeros = jnp.zeros_like(gates_x[0, :, :hidden])  # [B, H], the data's sharding

  def step(carry, gx):
    c, h = carry
    i, f, g, o = jnp.split(gx + h @ w_h, 4, axis=-1)
    i, f, g, o = jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)
    c_new = f * c + i * g
    h_new = o * jnp.tanh(c_new)
    return (c_new, h_new), (h_new, c_new, jnp.concatenate([i, f, g, o], -1), h)

  _, (hs, cs, acts, h_prev) = jax.lax.scan(step, (zeros, zeros), gates_x, unroll=True)
  return hs, (acts, cs, h_prev, w_h)  # acts [T, B, 4H]; cs, h_prev [T, B, H]


def _lstm_bwd(residuals, d_hs):
  acts, cs, h_prev, w_h = residuals
  t, b, hidden = cs.shape
  c_prev = jnp.concatenate([jnp.zeros_like(cs[:1]), cs[:-1]])  # c_{t-1}, [T, B, H]

  def step(carry, xs):
    dh_next, dc_next = carry
    dh_out, act, c, cp = xs
    i, f, g, o = jnp.split(act, 4, axis=-1)
    dh = dh_out + dh_next
    tanh_c = jnp.tanh(c)
    dc = dc_next + dh * o * (1 - tanh_c * tanh_c)
    d_gates = jnp.concatenate([dc * g * i * (1 - i), dc * cp * f * (1 - f),
                               dc * i * (1 - g * g), dh * tanh_c * o * (1 - o)], -1)
    return (d_gates @ w_h.T, dc * f), d_gates

  zeros = jnp.zeros_like(d_hs[0])
  _, d_gates = jax.lax.scan(step, (zeros, zeros), (d_hs, acts, cs, c_prev),
                            reverse=True, unroll=True)  # [T, B, 4H]
  # One matmul over all T*B rows: [T*B, H]^T x [T*B, 4H] -> [H, 4H].
  d_w = h_prev.reshape(t * b, hidden).T @ d_gates.reshape(t * b, 4 * hidden)
  return d_gates, cotangent_like(d_w, w_h)


lstm_recurrence.defvjp(_lstm_fwd, _lstm_bwd)


# ------------------------------------------------------------------------ BatchNorm


def batch_statistics(x, axis_name: Optional[str]):
  """Mean and (biased) variance per channel of x [..., C] over every other axis and
  the devices of `axis_name`: E[x^2] - E[x]^2 clipped at 0 (`flax.linen.BatchNorm`'s
  fast variance, same arithmetic)."""
  axes = tuple(range(x.ndim - 1))
  mean, mean_sq = x.mean(axes), jnp.square(x).mean(axes)
  if axis_name is not None:
    mean, mean_sq = jax.lax.pmean(jnp.stack([mean, mean_sq]), axis_name)
  return mean, jnp.maximum(0.0, mean_sq - jnp.square(mean))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def batch_norm_train(x, scale, bias, epsilon: float, axis_name: Optional[str]):
  """(y, mean, var): x [..., C] normalised with its batch statistics, then scaled and
  shifted (`flax.linen.BatchNorm`'s arithmetic); mean and var [C] for the running
  averages carry no gradient (their cotangents are ignored).

  The backward does not differentiate the variance's clip at 0 (Flax's guard against
  rounding). Where the clip binds, the channel is constant over the batch: x_hat is 0 up
  to rounding, and so is the term the clip would remove from the gradient.
  """
  return _bn_fwd(x, scale, bias, epsilon, axis_name)[0]


def _bn_fwd(x, scale, bias, epsilon, axis_name):
  mean, var = batch_statistics(x, axis_name)
  inv = jax.lax.rsqrt(var + epsilon)
  y = (x - mean) * (inv * scale) + bias
  return (y, mean, var), (x, scale, bias, mean, inv)


def _bn_bwd(epsilon, axis_name, residuals, cotangents):
  del epsilon
  x, scale, bias, mean, inv = residuals
  dy = cotangents[0]
  axes = tuple(range(x.ndim - 1))
  x_hat = (x - mean) * inv
  d_bias, d_scale = dy.sum(axes), (dy * x_hat).sum(axes)  # this device's rows
  n = x.size // x.shape[-1]
  total_bias, total_scale = d_bias, d_scale
  if axis_name is not None:
    total_bias, total_scale = jax.lax.psum(jnp.stack([d_bias, d_scale]), axis_name)
    n = n * jax.lax.psum(1, axis_name)
  dx = (scale * inv / n) * (n * dy - total_bias - x_hat * total_scale)
  return (cotangent_like(dx, x), cotangent_like(d_scale, scale),
          cotangent_like(d_bias, bias))


batch_norm_train.defvjp(_bn_fwd, _bn_bwd)
