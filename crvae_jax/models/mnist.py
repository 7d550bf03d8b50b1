"""MNIST encoder, decoder and every Table 1 variant (docs/models.md, sections 1 and 3).

Variants (all with a 1024-dim latent; `num_blocks` = T):
  vae               Dense(4096 -> 1024) mean and logvar, flat latent; Dense(1024 -> 4096).
  cvae              conv3x3(256 -> 64) mean and logvar, 4x4x64 latent; conv3x3(64 -> 256).
  crvae_inference   channel-recurrent posterior, cVAE generation path.
  crvae_generation  cVAE posterior, channel-recurrent generation path.
  crvae             channel-recurrent on both paths (crIWA = this + the IWAE objective).
  crvae_2layer      crvae plus a second stochastic layer on top (see `TopLayer`).

Our choices where the paper is silent: convolutions feeding BatchNorm have no bias;
every projection of the latent into the decoder (Dense or conv3x3) is followed by BN and
LeakyReLU(0.1); LeakyReLU slope 0.1 throughout; the last encoder conv is 3x3 for the
channel-recurrent variants and 5x5 for vae/cvae, as in the release.
"""

import functools
from typing import NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from crvae_jax import objectives
from crvae_jax.models import layers
from crvae_jax.models.channel_recurrent import (ChannelRecurrentGenerator,
                                                ChannelRecurrentPosterior, Gaussian,
                                                gaussian)

VARIANTS = ("vae", "cvae", "crvae_inference", "crvae_generation", "crvae",
            "crvae_2layer")
RECURRENT_INFERENCE = ("crvae_inference", "crvae", "crvae_2layer")
RECURRENT_GENERATION = ("crvae_generation", "crvae", "crvae_2layer")
IMAGE_SHAPE = (28, 28, 1)


class ModelOutput(NamedTuple):
  """Per-sample terms for n latent samples of each of B images (nats)."""
  recon_ll: jax.Array  # [B, n]     log p(x | z1)
  kl_blocks: jax.Array  # [B, n, T]  log q(z1|x) - log p(z1 | .), summed within block t
  kl_top: jax.Array  # [B, n]     log q(z2|z1) - log p(z2); 0 for one-layer models
  kl_blocks_analytic: Optional[jax.Array]  # [B, T] closed-form KL; None for 2 layers
  logits: jax.Array  # [B, n, 28, 28, 1] Bernoulli logits


class MnistEncoder(nn.Module):
  width: int = 32
  last_kernel: int = 3
  conv_impl: str = "auto"
  bn_axis_name: Optional[str] = None
  fused_backward: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):  # x: [B, 28, 28, 1] in {0, 1}
    bn = lambda: layers.batch_norm(train, self.bn_axis_name,
                                   fused_backward=self.fused_backward)
    conv = functools.partial(layers.conv, impl=self.conv_impl)
    c, k = self.width, self.last_kernel
    x = layers.crelu(bn()(conv(c, 5, 2, 3)(x)))  # [B, 15, 15, 2c]
    x = layers.leaky_relu(bn()(conv(2 * c, 3, 1, 1)(x)))
    x = layers.crelu(bn()(conv(2 * c, 3, 2, 1)(x)))  # [B, 8, 8, 4c]
    x = layers.leaky_relu(bn()(conv(4 * c, 3, 1, 1)(x)))
    x = layers.crelu(bn()(conv(4 * c, k, 2, k // 2)(x)))  # [B, 4, 4, 8c]
    return layers.leaky_relu(bn()(conv(8 * c, 3, 1, 1)(x)))  # [B, 4, 4, 8c]


class MnistDecoder(nn.Module):
  """[B, 4, 4, 8c] pre-BN features -> Bernoulli logits [B, 28, 28, 1]."""
  width: int = 32
  conv_impl: str = "auto"
  bn_axis_name: Optional[str] = None
  fused_backward: bool = False

  @nn.compact
  def __call__(self, h, train: bool = False):
    bn = lambda: layers.batch_norm(train, self.bn_axis_name,
                                   fused_backward=self.fused_backward)
    c = self.width
    h = layers.leaky_relu(bn()(h))
    for out, pad in ((8 * c, 1), (4 * c, 1), (2 * c, 2)):  # 8x8, 16x16, 30x30
      h = layers.ConvTranspose(out, 4, 2, pad, impl=self.conv_impl)(h)
      h = layers.leaky_relu(bn()(h))
      h = layers.leaky_relu(bn()(layers.conv(out, 3, 1, 1, impl=self.conv_impl)(h)))
    return layers.conv(1, 3, 1, 0, use_bias=True, impl=self.conv_impl)(h)  # [B, 28, 28, 1]


class TopLayer(nn.Module):
  """Second stochastic layer of `crvae_2layer` (our choice; the paper gives none).

  z2 in R^top_dim with p(z2) = N(0, I); q(z2|z1) and p(z1|z2) are diagonal Gaussians
  whose parameters come from 2-hidden-layer MLPs (LeakyReLU 0.1):
    inference  x -> q(z1|x) (channel-recurrent) -> z1 -> q(z2|z1)
    generation z2 -> p(z1|z2) -> z1 -> channel-recurrent u -> decoder -> x
  """
  z1_dim: int = 1024
  top_dim: int = 128
  hidden: int = 512

  def setup(self):
    self.up = [nn.Dense(self.hidden), nn.Dense(self.hidden), nn.Dense(2 * self.top_dim)]
    self.down = [nn.Dense(self.hidden), nn.Dense(self.hidden), nn.Dense(2 * self.z1_dim)]

  @staticmethod
  def _mlp(dense, x):
    for layer in dense[:-1]:
      x = layers.leaky_relu(layer(x))
    return gaussian(*jnp.split(dense[-1](x), 2, axis=-1))

  def posterior(self, z1_flat):  # [N, z1_dim] -> Gaussian over [N, top_dim]
    return self._mlp(self.up, z1_flat)

  def prior_of_z1(self, z2):  # [N, top_dim] -> Gaussian over [N, z1_dim]
    return self._mlp(self.down, z2)


class MnistVAE(nn.Module):
  """Every MNIST variant. Randomness comes in as explicit standard-normal `eps`."""
  variant: str = "crvae"
  num_blocks: int = 8
  width: int = 32
  lstm_hidden: int = 512
  latent_channels: int = 64
  top_dim: int = 128
  conv_impl: str = "auto"
  bn_axis_name: Optional[str] = None
  # Hand-written backward passes for the LSTMs and BatchNorms (`fused_backward`): the
  # same values as autodiff to float rounding, not bit for bit (the configs turn it on).
  fused_backward: bool = False

  @property
  def latent_shape(self):
    """Shape of one layer-1 latent sample (without the batch)."""
    c = self.latent_channels
    return (16 * c,) if self.variant == "vae" else (4, 4, c)

  def setup(self):
    if self.variant not in VARIANTS:
      raise ValueError(f"model.variant must be one of {VARIANTS}, got {self.variant!r}")
    enc_channels = 8 * self.width
    last_kernel = 5 if self.variant in ("vae", "cvae") else 3
    self.encoder = MnistEncoder(self.width, last_kernel, self.conv_impl, self.bn_axis_name,
                                self.fused_backward)
    self.decoder = MnistDecoder(self.width, self.conv_impl, self.bn_axis_name,
                                self.fused_backward)
    if self.variant == "vae":
      self.enc_mean = nn.Dense(16 * self.latent_channels)
      self.enc_logvar = nn.Dense(16 * self.latent_channels)
      self.dec_in = nn.Dense(16 * enc_channels)
    elif self.variant in RECURRENT_INFERENCE:
      self.posterior_block = ChannelRecurrentPosterior(
          self.num_blocks, self.latent_channels, self.lstm_hidden, mean_head="dense",
          fused_backward=self.fused_backward)
    else:
      self.enc_mean = layers.conv(self.latent_channels, 3, padding=1, use_bias=True,
                                  impl=self.conv_impl)
      self.enc_logvar = layers.conv(self.latent_channels, 3, padding=1, use_bias=True,
                                  impl=self.conv_impl)
    if self.variant in RECURRENT_GENERATION:
      self.generator_block = ChannelRecurrentGenerator(self.num_blocks, self.lstm_hidden,
                                                       self.fused_backward)
      self.b_dec = self.param("b_dec", nn.initializers.zeros, (4, 4, self.latent_channels))
    if self.variant != "vae":
      self.dec_in = layers.conv(enc_channels, 3, padding=1, impl=self.conv_impl)
    if self.variant == "crvae_2layer":
      self.top = TopLayer(16 * self.latent_channels, self.top_dim, self.lstm_hidden)

  def encode(self, x, train: bool = False) -> Gaussian:
    """q(z1|x) for binary images x [B, 28, 28, 1]."""
    f = self.encoder(x, train)  # [B, 4, 4, 8c]
    if self.variant == "vae":
      f = f.reshape(f.shape[0], -1)  # [B, 4*4*8c]
      return gaussian(self.enc_mean(f), self.enc_logvar(f))
    if self.variant in RECURRENT_INFERENCE:
      return self.posterior_block(f)
    return gaussian(self.enc_mean(f), self.enc_logvar(f))

  def decode(self, z1, train: bool = False):
    """Layer-1 latent [N, *latent_shape] -> Bernoulli logits [N, 28, 28, 1]."""
    if self.variant == "vae":
      h = self.dec_in(z1).reshape(z1.shape[0], 4, 4, 8 * self.width)  # [N, 4, 4, 8c]
    else:
      if self.variant in RECURRENT_GENERATION:
        z1 = self.generator_block(z1) + self.b_dec  # u + b_dec
      h = self.dec_in(z1)
    return self.decoder(h, train)

  def sample_terms(self, x, posterior: Gaussian, eps1, eps2=None,
                   train: bool = False) -> ModelOutput:
    """Log-likelihood and KL terms for n samples per image.

    x [B, 28, 28, 1]; eps1 [B, n, *latent_shape]; eps2 [B, n, top_dim] (2 layers only).
    """
    b, n = eps1.shape[:2]
    mean, logvar = (jnp.expand_dims(a, 1) for a in posterior)  # [B, 1, *latent]
    z1 = mean + jnp.exp(0.5 * logvar) * eps1  # [B, n, *latent]
    log_q1 = objectives.gaussian_log_density(z1, mean, logvar)
    flat = lambda a: a.reshape(b * n, *a.shape[2:])
    if self.variant == "crvae_2layer":
      z1_flat = z1.reshape(b * n, -1)  # [B*n, 1024]
      q2 = self.top.posterior(z1_flat)
      z2 = q2.mean + jnp.exp(0.5 * q2.logvar) * flat(eps2)  # [B*n, top_dim]
      p1 = self.top.prior_of_z1(z2)
      log_p1 = objectives.gaussian_log_density(z1_flat, *p1).reshape(z1.shape)
      kl_top = (objectives.gaussian_log_density(z2, *q2)
                - objectives.standard_normal_log_density(z2)).sum(-1).reshape(b, n)
      kl_analytic = None
    else:
      log_p1 = objectives.standard_normal_log_density(z1)
      kl_top = jnp.zeros((b, n), x.dtype)
      kl_analytic = objectives.kl_per_block(
          objectives.kl_to_standard_normal(*posterior), self.num_blocks)
    kl_blocks = objectives.kl_per_block(flat(log_q1 - log_p1), self.num_blocks)
    logits = self.decode(flat(z1), train)  # [B*n, 28, 28, 1]
    x_rep = jnp.broadcast_to(x[:, None], (b, n) + x.shape[1:]).reshape(logits.shape)
    recon = objectives.bernoulli_log_likelihood(logits, x_rep).reshape(b, n)
    return ModelOutput(recon, kl_blocks.reshape(b, n, self.num_blocks), kl_top,
                       kl_analytic, logits.reshape(b, n, *IMAGE_SHAPE))

  def __call__(self, x, eps1, eps2=None, train: bool = False) -> ModelOutput:
    return self.sample_terms(x, self.encode(x, train), eps1, eps2, train)

  def generate(self, eps1, eps2=None):
    """Prior samples (BN in inference mode): eps1 [N, *latent], eps2 [N, top_dim].

    One layer: z1 = eps1. Two layers: z2 = eps2, z1 = mean + std * eps1 under p(z1|z2).
    Returns Bernoulli logits [N, 28, 28, 1].
    """
    z1 = eps1
    if self.variant == "crvae_2layer":
      p1 = self.top.prior_of_z1(eps2)
      z1 = (p1.mean + jnp.exp(0.5 * p1.logvar) * eps1.reshape(eps1.shape[0], -1))
      z1 = z1.reshape(eps1.shape)
    return self.decode(z1, train=False)
