"""The channel-recurrent latent block (docs/models.md, section 1).

A feature map or latent [B, H, W, C] is cut into T blocks along channels: block t holds
channels t*C/T ... (t+1)*C/T - 1. Each block is flattened into one step of a sequence
[B, T, H*W*C/T] that a 2-layer LSTM runs over. The inverse reassembles step t into
channels t*C'/T ... of the output, so latent channel block t always belongs to step t.
"""

from typing import NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from crvae_jax.models import layers
from crvae_jax.models.lstm import StackedLSTM


class Gaussian(NamedTuple):
  """Diagonal Gaussian; both fields have the latent's shape ([B, 4, 4, 64] or [B, D])."""
  mean: jax.Array
  logvar: jax.Array


# Every log-variance a model emits goes through `bounded_logvar` (our choice; the paper's
# heads are plain linear maps). Inside LOGVAR_LINEAR it is the identity, so the model is
# the paper's; beyond, it bends smoothly (C1, tanh) towards LOGVAR_LIMIT, which it never
# crosses. So exp(+-logvar) stays finite in float32 (e^10 ~ 2.2e4, e^20 ~ 4.9e8) for any
# weights, and the objective is the exact bound of the Gaussian actually used: nothing
# is clipped after the fact.
LOGVAR_LINEAR = (-16.0, 8.0)  # std from 3.4e-4 to 55: wider than any trained posterior
LOGVAR_LIMIT = (-20.0, 10.0)


def bounded_logvar(raw: jax.Array) -> jax.Array:
  """Log-variance within LOGVAR_LIMIT from a raw linear output; identity in LOGVAR_LINEAR."""
  (lo, hi), (lo_limit, hi_limit) = LOGVAR_LINEAR, LOGVAR_LIMIT
  above = hi + (hi_limit - hi) * jnp.tanh((raw - hi) / (hi_limit - hi))
  below = lo - (lo - lo_limit) * jnp.tanh((lo - raw) / (lo - lo_limit))
  return jnp.where(raw > hi, above, jnp.where(raw < lo, below, raw))


def gaussian(mean: jax.Array, raw_logvar: jax.Array) -> Gaussian:
  """A model's Gaussian from its mean and raw log-variance heads (see `bounded_logvar`)."""
  return Gaussian(mean, bounded_logvar(raw_logvar))


def split_channel_blocks(a: jax.Array, num_blocks: int) -> jax.Array:
  """[B, H, W, C] -> [B, T, H*W*C/T]; step t holds channels t*C/T ... (t+1)*C/T - 1.

  A flat [B, D] latent is split into T contiguous chunks [B, T, D/T].
  """
  if a.ndim == 2:
    b, d = a.shape
    return a.reshape(b, num_blocks, d // num_blocks)
  b, h, w, c = a.shape
  if c % num_blocks:
    raise ValueError(f"{c} channels cannot be split into {num_blocks} blocks")
  a = a.reshape(b, h, w, num_blocks, c // num_blocks)  # [B, H, W, T, C/T]
  a = a.transpose(0, 3, 1, 2, 4)  # [B, T, H, W, C/T]
  return a.reshape(b, num_blocks, h * w * (c // num_blocks))  # [B, T, H*W*C/T]


def merge_channel_blocks(seq: jax.Array, height: int, width: int) -> jax.Array:
  """Inverse of `split_channel_blocks`: [B, T, H*W*c] -> [B, H, W, T*c]."""
  b, t, n = seq.shape
  c = n // (height * width)
  seq = seq.reshape(b, t, height, width, c)  # [B, T, H, W, c]
  return seq.transpose(0, 2, 3, 1, 4).reshape(b, height, width, t * c)  # [B, H, W, T*c]


class ChannelRecurrentPosterior(nn.Module):
  """q(z|x): mean = linear map of the features + b_enc; log-variance = LSTM over the
  feature map's channel blocks, with a Dense(hidden -> H*W*L/T) shared across steps.

  mean_head: 'dense' (MNIST: Dense on the flattened features) or 'conv' (RGB models:
  conv3x3). Input features [B, H, W, C]; output Gaussian over [B, H, W, L].
  """
  num_blocks: int
  latent_channels: int = 64
  hidden: int = 512
  mean_head: str = "dense"
  batch_norm: bool = False  # RGB models: BN over the LSTM features, shared across steps
  train: bool = False
  bn_axis_name: Optional[str] = None
  conv_impl: str = "auto"  # the conv mean head's kernels
  fused_backward: bool = False  # the LSTM's (and BN's) hand-written backward passes

  @nn.compact
  def __call__(self, features, train: Optional[bool] = None):
    """train (BN mode) overrides the attribute when given."""
    train = self.train if train is None else train
    b, h, w, _ = features.shape
    lat = self.latent_channels
    if self.mean_head == "dense":
      mean = nn.Dense(h * w * lat, use_bias=False, name="mean")(features.reshape(b, -1))
      mean = mean.reshape(b, h, w, lat)  # [B, H*W*L] -> [B, H, W, L]
    elif self.mean_head == "conv":
      mean = layers.conv(lat, 3, padding=1, name="mean", impl=self.conv_impl)(features)
    else:
      raise ValueError(f"mean_head must be 'dense' or 'conv', got {self.mean_head!r}")
    mean = mean + self.param("b_enc", nn.initializers.zeros, (h, w, lat))

    seq = split_channel_blocks(features, self.num_blocks)  # [B, T, H*W*C/T]
    hs = StackedLSTM(self.hidden, fused_backward=self.fused_backward,
                     name="lstm")(seq)  # [B, T, hidden]
    if self.batch_norm:
      hs = layers.batch_norm(train, self.bn_axis_name, name="lstm_bn",
                             fused_backward=self.fused_backward)(
          hs.reshape(b * self.num_blocks, self.hidden)).reshape(hs.shape)
    logvar_seq = nn.Dense(h * w * lat // self.num_blocks, name="logvar")(hs)
    logvar = merge_channel_blocks(logvar_seq, h, w)  # [B, H, W, L]
    return gaussian(mean, logvar)


class ChannelRecurrentGenerator(nn.Module):
  """p(x|z) side: u = LSTM over z's channel blocks with a shared Dense(hidden -> block).

  z [B, H, W, L] -> u [B, H, W, L]. The decoder input is u + b_dec (added by the
  caller, so that u itself, before the bias, stays available, e.g. as the MI target).
  """
  num_blocks: int
  hidden: int = 512
  fused_backward: bool = False  # the LSTM's hand-written backward pass

  @nn.compact
  def __call__(self, z):
    _, h, w, lat = z.shape
    seq = split_channel_blocks(z, self.num_blocks)  # [B, T, H*W*L/T]
    hs = StackedLSTM(self.hidden, fused_backward=self.fused_backward,
                     name="lstm")(seq)  # [B, T, hidden]
    u_seq = nn.Dense(h * w * lat // self.num_blocks, name="out")(hs)  # [B, T, H*W*L/T]
    return merge_channel_blocks(u_seq, h, w)  # [B, H, W, L]
