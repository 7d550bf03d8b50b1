"""64x64 RGB Stage1 networks of VAE-GAN and crVAE-GAN (docs/models.md, section 4).

Variants:
  vaegan    Dense(4096 -> 1024) mean and log-variance, flat 1024-d latent;
            Dense(1024 -> 4096) into the decoder.
  crvaegan  conv3x3 mean + b_enc and a channel-recurrent log-variance (LSTM over T
            channel blocks, BN over its features), 4x4x64 latent; the generation LSTM
            gives u, the decoder reads u + b_dec.

All convolutions and transposed convolutions have no bias (each is followed by BN) except
the last; `width` (paper 32) scales every channel count. Images are [B, 64, 64, 3] in
[-1, 1]. The discriminator trunk is shared by the real/fake head and the MI head, which
predicts u (before b_dec) from a generated image.
"""

import functools
from typing import NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from crvae_jax.models import layers
from crvae_jax.models.channel_recurrent import (ChannelRecurrentGenerator,
                                                ChannelRecurrentPosterior, Gaussian,
                                                gaussian)

RGB_VARIANTS = ("vaegan", "crvaegan")
IMAGE_SIZE = 64


class RgbEncoder(nn.Module):
  """[B, 64, 64, 3] in [-1, 1] -> features [B, 4, 4, 8c]."""
  width: int = 32
  conv_impl: str = "auto"
  bn_axis_name: Optional[str] = None
  fused_backward: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    bn = lambda: layers.batch_norm(train, self.bn_axis_name,
                                   fused_backward=self.fused_backward)
    conv = functools.partial(layers.conv, impl=self.conv_impl)
    c = self.width
    x = layers.crelu(x)  # [B, 64, 64, 6]
    x = layers.crelu(bn()(conv(c, 5, 2, 2)(x)))  # [B, 32, 32, 2c]
    x = layers.crelu(bn()(conv(2 * c, 3, 2, 1)(x)))  # [B, 16, 16, 4c]
    x = layers.crelu(bn()(conv(4 * c, 3, 2, 1)(x)))  # [B, 8, 8, 8c]
    x = layers.leaky_relu(bn()(conv(8 * c, 3, 1, 1)(x)))  # [B, 8, 8, 8c]
    x = layers.crelu(bn()(conv(8 * c, 3, 2, 1)(x)))  # [B, 4, 4, 16c]
    return layers.leaky_relu(bn()(conv(8 * c, 3, 1, 1)(x)))  # [B, 4, 4, 8c]


class RgbDecoder(nn.Module):
  """Decoder input features [B, 4, 4, 8c] (before BN) -> image [B, 64, 64, 3] (tanh)."""
  width: int = 32
  conv_impl: str = "auto"
  bn_axis_name: Optional[str] = None
  fused_backward: bool = False

  @nn.compact
  def __call__(self, h, train: bool = False):
    bn = lambda: layers.batch_norm(train, self.bn_axis_name,
                                   fused_backward=self.fused_backward)
    conv = functools.partial(layers.conv, impl=self.conv_impl)
    deconv = lambda out: layers.ConvTranspose(out, 4, 2, 1, impl=self.conv_impl)
    c = self.width
    h = bn()(h)
    h = layers.leaky_relu(bn()(deconv(8 * c)(h)))  # [B, 8, 8, 8c]
    h = layers.leaky_relu(bn()(conv(8 * c, 3, 1, 1)(h)))
    h = layers.leaky_relu(bn()(deconv(4 * c)(h)))  # [B, 16, 16, 4c]
    h = layers.leaky_relu(bn()(deconv(2 * c)(h)))  # [B, 32, 32, 2c]
    h = layers.leaky_relu(bn()(deconv(2 * c)(h)))  # [B, 64, 64, 2c]
    h = layers.leaky_relu(bn()(conv(2 * c, 3, 1, 1)(h)))
    return jnp.tanh(conv(3, 3, 1, 1, use_bias=True)(h))  # [B, 64, 64, 3]


class RgbVAE(nn.Module):
  """Encoder + latent block + decoder of VAE-GAN ('vaegan') or crVAE-GAN ('crvaegan')."""
  variant: str = "crvaegan"
  num_blocks: int = 8
  width: int = 32
  lstm_hidden: int = 512
  latent_channels: int = 64
  conv_impl: str = "auto"
  bn_axis_name: Optional[str] = None
  fused_backward: bool = False  # LSTM/BatchNorm backward passes (models/fused_backward.py)

  @property
  def latent_shape(self):
    """Shape of one latent sample (without the batch)."""
    c = self.latent_channels
    return (16 * c,) if self.variant == "vaegan" else (4, 4, c)

  def setup(self):
    if self.variant not in RGB_VARIANTS:
      raise ValueError(f"model.variant must be one of {RGB_VARIANTS}, got {self.variant!r}")
    self.encoder = RgbEncoder(self.width, self.conv_impl, self.bn_axis_name,
                              self.fused_backward)
    self.decoder = RgbDecoder(self.width, self.conv_impl, self.bn_axis_name,
                              self.fused_backward)
    if self.variant == "vaegan":
      self.enc_mean = nn.Dense(16 * self.latent_channels)
      self.enc_logvar = nn.Dense(16 * self.latent_channels)
      self.dec_in = nn.Dense(16 * 8 * self.width)
    else:
      self.posterior_block = ChannelRecurrentPosterior(
          self.num_blocks, self.latent_channels, self.lstm_hidden, mean_head="conv",
          batch_norm=True, bn_axis_name=self.bn_axis_name, conv_impl=self.conv_impl,
          fused_backward=self.fused_backward)
      self.generator_block = ChannelRecurrentGenerator(self.num_blocks, self.lstm_hidden,
                                                       self.fused_backward)
      self.b_dec = self.param("b_dec", nn.initializers.zeros, (4, 4, self.latent_channels))
      self.dec_in = layers.conv(8 * self.width, 3, padding=1, impl=self.conv_impl)

  def encode(self, x, train: bool = False) -> Gaussian:
    """q(z|x) for images x [B, 64, 64, 3]."""
    f = self.encoder(x, train)  # [B, 4, 4, 8c]
    if self.variant == "vaegan":
      f = f.reshape(f.shape[0], -1)  # [B, 4*4*8c]
      return gaussian(self.enc_mean(f), self.enc_logvar(f))
    return self.posterior_block(f, train)

  def generation_code(self, z):
    """u: the generation LSTM's output for a latent z [N, 4, 4, L] (crvaegan), before
    b_dec; the MI head's target. For vaegan, z itself."""
    return self.generator_block(z) if self.variant == "crvaegan" else z

  def decode_code(self, code, train: bool = False):
    """`generation_code(z)` -> image [N, 64, 64, 3] in [-1, 1]."""
    if self.variant == "vaegan":
      h = self.dec_in(code).reshape(code.shape[0], 4, 4, 8 * self.width)  # [N, 4, 4, 8c]
    else:
      h = self.dec_in(code + self.b_dec)
    return self.decoder(h, train)

  def decode(self, z, train: bool = False):
    """Latent [N, *latent_shape] -> image [N, 64, 64, 3] in [-1, 1]."""
    return self.decode_code(self.generation_code(z), train)

  def __call__(self, x, eps_q, eps_p, train: bool = False) -> "Stage1Output":
    """Reconstructions (z ~ q(z|x) = mean + std * eps_q) and prior samples (z = eps_p) of
    images x [B, 64, 64, 3]; eps_q, eps_p [B, *latent_shape]. The two decoder passes
    are separate, so BN normalises each with its own batch statistics."""
    q = self.encode(x, train)
    z_rec = q.mean + jnp.exp(0.5 * q.logvar) * eps_q
    u_rec, u_prior = self.generation_code(z_rec), self.generation_code(eps_p)
    return Stage1Output(q, self.decode_code(u_rec, train), self.decode_code(u_prior, train),
                        u_rec, u_prior)


class Stage1Output(NamedTuple):
  posterior: Gaussian  # q(z|x), [B, *latent_shape] each
  reconstruction: jax.Array  # [B, 64, 64, 3]
  prior_sample: jax.Array  # [B, 64, 64, 3]
  code_rec: jax.Array  # u of the reconstruction's z (the MI target), [B, *latent_shape]
  code_prior: jax.Array  # u of the prior sample's z


@jax.custom_vjp
def max_pool2(x):
  """2x2 max pooling with stride 2 (`nn.max_pool(x, (2, 2), (2, 2))`, same values and
  gradient): [B, H, W, C] -> [B, H/2, W/2, C], H and W even.

  The gradient goes to the first maximum of each window in row-major order, as the
  select-and-scatter of `nn.max_pool`'s gradient sends it, but as a few element-wise
  selects: XLA:CPU expands select-and-scatter into a reduce-window that tracks each
  element's four indices and a scatter, a quarter of the Stage1 step at CPU scale
  (`benchmarks/ab_gan_step.py`; figures in benchmarks/RESULTS.md).
  """
  return _window_corners(x).max(0)


def _window_corners(x):
  """[B, H, W, C] -> [4, B, H/2, W/2, C]: each 2x2 window's elements in row-major order."""
  b, h, w, c = x.shape
  if h % 2 or w % 2:
    raise ValueError(f"max_pool2 needs an even height and width, got input {x.shape}")
  x = x.reshape(b, h // 2, 2, w // 2, 2, c)  # [B, H/2, dy, W/2, dx, C]
  return x.transpose(2, 4, 0, 1, 3, 5).reshape(4, b, h // 2, w // 2, c)


def _max_pool2_fwd(x):
  y = max_pool2(x)
  return y, (x, y)


def _max_pool2_bwd(res, g):
  x, y = res
  b, h, w, c = x.shape
  taken = jnp.zeros(y.shape, bool)
  parts = []
  for corner in _window_corners(x):  # the first maximum of its window takes g
    first = (corner == y) & ~taken
    taken = taken | first
    parts.append(jnp.where(first, g, jnp.zeros_like(g)))
  dx = jnp.stack(parts).reshape(2, 2, b, h // 2, w // 2, c)  # [dy, dx, B, H/2, W/2, C]
  return (dx.transpose(2, 3, 0, 4, 1, 5).reshape(b, h, w, c),)


max_pool2.defvjp(_max_pool2_fwd, _max_pool2_bwd)


class MinibatchDiscrimination(nn.Module):
  """Salimans et al. (2016): features [b, A] -> [b, K] with
  o(x_i)_k = sum_j exp(-||M_i,k - M_j,k||_1), M = x T reshaped to [b, K, D].

  The sum runs over the whole batch (including i itself, as in the paper's formula);
  with `axis_name` it is the **global** batch: every device's M is all-gathered, so the
  features do not depend on how the batch is split over devices.
  """
  num_kernels: int = 100
  kernel_dim: int = 5
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, h):
    t = self.param("kernel", nn.initializers.normal(0.05),
                   (h.shape[-1], self.num_kernels * self.kernel_dim))
    m = (h @ t).reshape(h.shape[0], self.num_kernels, self.kernel_dim)  # [b, K, D]
    others = m if self.axis_name is None else jax.lax.all_gather(
        m, self.axis_name, tiled=True)  # [B, K, D] (global batch)
    # Kernels first, batches last ([K, D, b, B]): the exp-sum over the batch and its
    # gradient reduce over the innermost (contiguous) axis, the L1 sum over D over
    # whole [b, B] planes; several times faster on CPU than [b, B, K, D].
    m_t, others_t = m.transpose(1, 2, 0), others.transpose(1, 2, 0)  # [K, D, b], [K, D, B]
    distance = jnp.abs(m_t[..., None] - others_t[:, :, None]).sum(1)  # [K, b, B]
    return jnp.exp(-distance).sum(-1).T  # [b, K]


class MIHead(nn.Module):
  """Trunk features [B, 4, 4, 8c] -> u_hat [B, 4, 4, L]: conv3x3 BN LReLU(0.2),
  conv1x1 BN LReLU(0.1), Dense(16L -> 16L) (with bias)."""
  latent_channels: int = 64
  conv_impl: str = "auto"
  bn_axis_name: Optional[str] = None
  fused_backward: bool = False

  @nn.compact
  def __call__(self, f, train: bool = False):
    bn = lambda: layers.batch_norm(train, self.bn_axis_name,
                                   fused_backward=self.fused_backward)
    lat = self.latent_channels
    h = layers.leaky_relu(bn()(layers.conv(lat, 3, 1, 1, impl=self.conv_impl)(f)), 0.2)
    h = layers.leaky_relu(bn()(layers.conv(lat, 1, 1, 0, impl=self.conv_impl)(h)), 0.1)
    u = nn.Dense(16 * lat)(h.reshape(h.shape[0], -1))  # [B, 16L]
    return u.reshape(f.shape[0], 4, 4, lat)  # [B, 4, 4, L]


class Discriminator(nn.Module):
  """Trunk (no BN; conv -> maxpool2 -> ReLU -> spatial dropout 0.5, x4) and the
  real/fake head. The MI head (`MIHead`, its own parameters) reads the same trunk's
  `features`; it is trained with the generator, so the discriminator's gated update
  covers exactly these parameters.

  Dropout draws from the 'dropout' rng when train=True. `axis_name` makes minibatch
  discrimination span the global batch.
  """
  width: int = 32
  hidden: int = 1024
  num_kernels: int = 100
  kernel_dim: int = 5
  conv_impl: str = "auto"
  axis_name: Optional[str] = None

  def setup(self):
    c = self.width
    self.trunk = [layers.conv(out, k, 1, k // 2, use_bias=True, impl=self.conv_impl)
                  for out, k in ((2 * c, 5), (4 * c, 5), (8 * c, 5), (8 * c, 3))]
    self.spatial_dropout = nn.Dropout(0.5, broadcast_dims=(1, 2))  # whole channels
    self.dense = nn.Dense(self.hidden)
    self.dropout = nn.Dropout(0.5)
    self.minibatch = MinibatchDiscrimination(self.num_kernels, self.kernel_dim,
                                             self.axis_name)
    self.out = nn.Dense(1)

  def features(self, x, train: bool = False, split: int = 0):
    """Trunk: [B, 64, 64, 3] -> [B, 4, 4, 8c].

    split > 0: rows [:split] (the real images) and [split:] (the generated ones) go
    through the trunk as two batches that never meet before the output, with the
    dropout masks of one draw over all B rows, so the values are those of split=0 (to
    float rounding). No gradient flows into rows [:split] of x, and a gradient through
    the generated rows only (the generator's) runs no backward pass of the real ones:
    the real rows' backward feeds nothing but the discriminator's parameters, which XLA
    then prunes from the generator's gradient.
    """
    # [B, ...] -> one or two parts of rows; the real part is a constant input.
    parts = [jax.lax.stop_gradient(x[:split]), x[split:]] if split else [x]
    for conv in self.trunk:
      parts = [nn.relu(max_pool2(conv(p))) for p in parts]  # halves H and W
      # Spatial dropout scales [B, 1, 1, C] (0 or 1/keep, whole channels) drawn for all
      # rows at once: x * 2 equals Dropout's x / 0.5 exactly.
      rows, channels = sum(p.shape[0] for p in parts), parts[0].shape[-1]
      scale = self.spatial_dropout(jnp.ones((rows, 1, 1, channels), parts[0].dtype),
                                   deterministic=not train)
      parts = [p * s for p, s in zip(parts, (scale[:split], scale[split:]) if split
                                     else (scale,))]
    return jnp.concatenate(parts) if split else parts[0]

  def logit(self, f, train: bool = False):
    """Real/fake head on trunk features f [B, 4, 4, 8c] -> logit [B] (sigmoid = P(real))."""
    h = self.dense(f.reshape(f.shape[0], -1))  # [B, hidden]
    h = h * jax.lax.rsqrt(jnp.sum(jnp.square(h), -1, keepdims=True) + 1e-12)  # L2-normalise
    h = nn.relu(self.dropout(h, deterministic=not train))
    h = jnp.concatenate([h, self.minibatch(h)], -1)  # [B, hidden + K]
    return self.out(h)[:, 0]

  def __call__(self, x, train: bool = False):
    """Images [B, 64, 64, 3] -> real/fake logits [B]."""
    return self.logit(self.features(x, train), train)
