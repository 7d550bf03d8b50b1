"""A stacked LSTM scanned over a short sequence (the T channel blocks of a latent).

Each layer projects its whole input sequence with one matmul, then `jax.lax.scan`s the
recurrent cell over the T steps. Initial state is zero; the forget-gate bias starts at
1 as in the paper's release. Gate order in the fused kernels: input, forget, cell, output.
`fused_backward=True` runs the recurrence through `fused_backward.lstm_recurrence` (the
same forward; a hand-written backward with one recurrent-kernel gradient matmul).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from crvae_jax.models import fused_backward as fused


def lstm_cell(carry, gates_x, recurrent_kernel):
  """One LSTM step. carry = (c, h) each [B, H]; gates_x = x_t W_x + b, [B, 4H]."""
  c, h = carry
  gates = gates_x + h @ recurrent_kernel  # [B, 4H]
  i, f, g, o = jnp.split(gates, 4, axis=-1)
  c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
  h = jax.nn.sigmoid(o) * jnp.tanh(c)
  return (c, h), h


def _lstm_bias_init(key, shape, dtype=jnp.float32):
  del key
  hidden = shape[0] // 4
  return jnp.zeros(shape, dtype).at[hidden:2 * hidden].set(1.0)  # forget gate = 1


class LSTMLayer(nn.Module):
  """One LSTM layer over a [B, T, D] sequence, returning the hidden states [B, T, H]."""
  hidden: int
  fused_backward: bool = False

  @nn.compact
  def __call__(self, xs):
    d = xs.shape[-1]
    h4 = 4 * self.hidden
    w_x = self.param("input_kernel", nn.initializers.lecun_normal(), (d, h4))
    w_h = self.param("recurrent_kernel", nn.initializers.orthogonal(), (self.hidden, h4))
    bias = self.param("bias", _lstm_bias_init, (h4,))
    gates_x = xs @ w_x + bias  # [B, T, 4H]
    if self.fused_backward:
      return fused.lstm_recurrence(gates_x.swapaxes(0, 1), w_h).swapaxes(0, 1)  # [B, T, H]
    # Zero state built from the data so it carries the batch's sharding (shard_map vma).
    zeros = jnp.zeros_like(gates_x[:, 0, :self.hidden])  # [B, H]
    step = lambda carry, g: lstm_cell(carry, g, w_h)
    # Over T; unrolled (T is only 4-16: faster on the CPU train step than a rolled loop).
    _, hs = jax.lax.scan(step, (zeros, zeros), gates_x.swapaxes(0, 1), unroll=True)
    return hs.swapaxes(0, 1)  # [T, B, H] -> [B, T, H]


class StackedLSTM(nn.Module):
  """`num_layers` LSTM layers, each scanned over the T steps of its input."""
  hidden: int
  num_layers: int = 2
  fused_backward: bool = False

  @nn.compact
  def __call__(self, xs):
    for layer in range(self.num_layers):
      xs = LSTMLayer(self.hidden, self.fused_backward, name=f"layer{layer}")(xs)
    return xs
