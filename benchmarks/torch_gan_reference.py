r"""PyTorch port of the Stage1 VAE-GAN / crVAE-GAN train step, as the speed reference.

  pip install -r requirements-torch.txt
  python -m benchmarks.torch_gan_reference --row=crvaegan --scales=cpu,paper --steps=5

Its own file (not benchmarks/torch_reference.py, the MNIST crVAE port): other networks,
losses and update; the building blocks both share (nn.LSTM set up as crvae_jax's
StackedLSTM, the channel-block split/merge, CReLU, bounded_logvar, the conv/BN
initialisers, the torch.compile variants, the matmul peak) live in torch_reference.py
and are imported from there. torch is not a dependency of crvae_jax.

The same computation as crvae_jax's Stage1 step (crvae_jax/train/stage1_step.py,
docs/objectives.md O5-O8, docs/models.md section 4), written as a PyTorch practitioner
writes it for speed on a CPU (PyTorch 2.13):

  networks         RgbVAE (encoder, posterior: conv mean head + b_enc, LSTM log-variance
                   with BN over its features; generation LSTM, b_dec, decoder; VAE-GAN:
                   dense heads), the Discriminator (trunk conv -> maxpool -> ReLU ->
                   spatial dropout x4, run on the real and the generated images as
                   two batches as in the JAX step; Dense, L2-normalise, dropout, ReLU,
                   minibatch discrimination (torch.cdist), Dense(1)) and the MI head:
                   same layers, same parameter counts per network and per optimizer
                   group (checked), crvae_jax's weights loadable (`load_jax_state`).
  nn.LSTM          each channel-recurrent LSTM is one nn.LSTM call (oneDNN); the
                   generation LSTM runs once over the reconstructions' and the prior
                   samples' latents together (as the JAX model does), the decoder
                   twice (BN normalises each batch on its own).
  one forward, two backward passes
                   as the JAX step's two vjps: loss_g.backward(inputs=generator + MI
                   head, retain_graph=True), loss_d.backward(inputs=discriminator).
  the gate         the discriminator's Adam step is skipped when its accuracy on the
                   batch is above objective.max_d_accuracy (its parameters and Adam
                   state untouched, as optax.conditionally_mask); its backward pass
                   runs every step, as in the JAX step.
  Adam(fused=True) two optimizers as crvae_jax's: generator + MI head with the LSTM
                   parameters (every parameter under a name containing 'lstm': the
                   LSTMs and the posterior's lstm_bn, as optimizer.is_lstm_path) at
                   lr / lstm_lr_divisor, gradients clipped element-wise (foreach); the
                   discriminator's trunk at lr * disc_trunk_lr_factor, its heads at lr.
  channels_last, and the torch.compile variants of torch_reference (the forward and
                   losses compiled; AOT autograd compiles their backward, which then
                   computes every gradient in both backward passes: the `inputs`
                   restriction cannot prune a compiled graph; its buffer donation is
                   off, as retain_graph needs).

Checked (`equivalence_check`; tests/test_torch_reference.py at tiny widths): the
parameter counts per network and per optimizer group equal the Flax networks' at both
scales, and one step from crvae_jax's initial weights on the same images and latent
noise, dropout off on both sides (flax's Dropout intercepted), gives the JAX step's
losses, accuracy, gate decision and gradient norms (rtol 2e-4) and its updated
parameters. Timed runs draw the noise and dropout masks with torch's generator. The
compiled variants are not compared with eager in the tests (compiling takes minutes).

Not ported (none matters for speed): the lr halving schedule and the discriminator
warm-up (both off in the configs; refused if on), the non-finite step guard and the
gradient-norm metrics; BN running variances use torch's unbiased update (Flax: biased).
"""

import argparse
import functools
import math
import os
import time
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from benchmarks import torch_reference as ref
from benchmarks.gan_throughput import GAN_ROWS, config_at_scale, random_images
from benchmarks.nll_eval import machine_line
from crvae_jax import host_memory

CHANNELS_LAST = ref.CHANNELS_LAST
HW = 4  # the encoder's output, the latent and the discriminator's features are 4x4


def nhwc_flat(x: torch.Tensor) -> torch.Tensor:
  """[B, C, H, W] -> [B, H*W*C] in NHWC order, as Flax flattens (a view when x is
  channels_last)."""
  return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)


def from_nhwc_flat(x: torch.Tensor, channels: int) -> torch.Tensor:
  """Inverse of `nhwc_flat` at 4x4: [B, 16*C] -> [B, C, 4, 4] (channels_last view)."""
  return x.reshape(x.shape[0], HW, HW, channels).permute(0, 3, 1, 2)


def make_deconv(cin: int, cout: int) -> nn.ConvTranspose2d:
  """4x4 stride-2 transposed convolution, padding 1, no bias (doubles H and W)."""
  deconv = nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False)
  nn.init.normal_(deconv.weight, std=1.0 / math.sqrt(cin * 16))
  return deconv


def make_linear(din: int, dout: int, bias: bool = True) -> nn.Linear:
  linear = nn.Linear(din, dout, bias=bias)
  nn.init.normal_(linear.weight, std=1.0 / math.sqrt(din))  # ~LeCun normal
  if bias:
    nn.init.zeros_(linear.bias)
  return linear


# --------------------------------------------------------------------------- networks

class RgbEncoder(nn.Module):
  """crvae_jax RgbEncoder: [B, 3, 64, 64] in [-1, 1] -> features [B, 8c, 4, 4]."""

  def __init__(self, width: int):
    super().__init__()
    c = width
    # (in, out, kernel, stride, padding, activation); the input's CReLU makes 6 channels
    spec = [(6, c, 5, 2, 2, ref.crelu),  # 32x32, 2c after CReLU
            (2 * c, 2 * c, 3, 2, 1, ref.crelu),  # 16x16, 4c
            (4 * c, 4 * c, 3, 2, 1, ref.crelu),  # 8x8, 8c
            (8 * c, 8 * c, 3, 1, 1, ref.leaky_relu),
            (8 * c, 8 * c, 3, 2, 1, ref.crelu),  # 4x4, 16c
            (16 * c, 8 * c, 3, 1, 1, ref.leaky_relu)]  # 4x4, 8c
    self.convs = nn.ModuleList(ref.make_conv(i, o, k, s, p) for i, o, k, s, p, _ in spec)
    self.bns = nn.ModuleList(ref.make_bn(o) for _, o, *_ in spec)
    self.acts = [a for *_, a in spec]

  def forward(self, x):
    x = ref.crelu(x)
    for conv, bn, act in zip(self.convs, self.bns, self.acts):
      x = act(bn(conv(x)))
    return x


class RgbDecoder(nn.Module):
  """crvae_jax RgbDecoder: features [N, 8c, 4, 4] (before BN) -> [N, 3, 64, 64] (tanh)."""

  def __init__(self, width: int):
    super().__init__()
    c = width
    self.bn_in = ref.make_bn(8 * c)
    # (kind, in, out) in order; each followed by BN and LeakyReLU(0.1)
    self.spec = [("deconv", 8 * c, 8 * c), ("conv", 8 * c, 8 * c),  # 8x8
                 ("deconv", 8 * c, 4 * c), ("deconv", 4 * c, 2 * c),  # 16x16, 32x32
                 ("deconv", 2 * c, 2 * c), ("conv", 2 * c, 2 * c)]  # 64x64
    self.layers = nn.ModuleList(
        make_deconv(i, o) if kind == "deconv" else ref.make_conv(i, o, 3, 1, 1)
        for kind, i, o in self.spec)
    self.bns = nn.ModuleList(ref.make_bn(o) for *_, o in self.spec)
    self.out = ref.make_conv(2 * c, 3, 3, 1, 1, bias=True)

  def forward(self, h):
    h = self.bn_in(h)
    for layer, bn in zip(self.layers, self.bns):
      h = ref.leaky_relu(bn(layer(h)))
    return torch.tanh(self.out(h))


class RgbPosterior(nn.Module):
  """ChannelRecurrentPosterior(mean_head='conv', batch_norm=True): mean = conv3x3 (no
  bias) + b_enc; log-variance = nn.LSTM over the features' T channel blocks, BN over
  its [B*T, hidden] outputs, Dense(hidden -> 16L/T) shared across steps."""

  def __init__(self, feature_channels: int, num_blocks: int, latent_channels: int,
               hidden: int):
    super().__init__()
    self.num_blocks, self.hidden = num_blocks, hidden
    self.mean = ref.make_conv(feature_channels, latent_channels, 3, 1, 1)
    self.b_enc = nn.Parameter(torch.zeros(HW, HW, latent_channels))
    self.lstm = ref.make_lstm(HW * HW * feature_channels // num_blocks, hidden)
    self.lstm_bn = nn.BatchNorm1d(hidden, eps=1e-5, momentum=0.1)
    self.logvar = make_linear(hidden, HW * HW * latent_channels // num_blocks)

  def forward(self, features):  # [B, C, 4, 4] -> mean, logvar [B, L, 4, 4]
    b = features.shape[0]
    mean = self.mean(features) + self.b_enc.permute(2, 0, 1)
    hs, _ = self.lstm(ref.split_channel_blocks(features, self.num_blocks))  # [B, T, H]
    hs = self.lstm_bn(hs.reshape(b * self.num_blocks, self.hidden)).reshape(hs.shape)
    logvar = ref.merge_channel_blocks(self.logvar(hs), HW, HW)
    return mean, ref.bounded_logvar(logvar)


class RgbVAE(nn.Module):
  """crvae_jax RgbVAE, variant 'crvaegan' or 'vaegan'."""

  def __init__(self, variant: str, num_blocks: int, width: int, lstm_hidden: int,
               latent_channels: int):
    super().__init__()
    if variant not in GAN_ROWS:
      raise ValueError(f"model.variant must be one of {GAN_ROWS}, got {variant!r}")
    self.variant, self.num_blocks, self.width = variant, num_blocks, width
    self.latent_channels = latent_channels
    self.encoder, self.decoder = RgbEncoder(width), RgbDecoder(width)
    flat = HW * HW * latent_channels
    if variant == "vaegan":
      self.enc_mean = make_linear(HW * HW * 8 * width, flat)
      self.enc_logvar = make_linear(HW * HW * 8 * width, flat)
      self.dec_in = make_linear(flat, HW * HW * 8 * width)
    else:
      self.posterior_block = RgbPosterior(8 * width, num_blocks, latent_channels,
                                          lstm_hidden)
      self.generator_block = ref.ChannelRecurrentGenerator(num_blocks, latent_channels,
                                                           lstm_hidden, hw=HW)
      self.b_dec = nn.Parameter(torch.zeros(HW, HW, latent_channels))
      self.dec_in = ref.make_conv(latent_channels, 8 * width, 3, 1, 1)

  @property
  def latent_shape(self):
    c = self.latent_channels
    return (HW * HW * c,) if self.variant == "vaegan" else (c, HW, HW)

  def encode(self, x):
    """q(z|x): mean, logvar [B, *latent_shape]."""
    f = self.encoder(x)  # [B, 8c, 4, 4]
    if self.variant == "vaegan":
      f = nhwc_flat(f)
      return self.enc_mean(f), ref.bounded_logvar(self.enc_logvar(f))
    return self.posterior_block(f)

  def generation_code(self, z):
    """u (before b_dec) of latents z [N, *latent_shape]; VAE-GAN: z itself."""
    return self.generator_block(z) if self.variant == "crvaegan" else z

  def decoder_input(self, code):
    """generation_code -> the decoder's input features [N, 8c, 4, 4]."""
    if self.variant == "vaegan":
      return from_nhwc_flat(self.dec_in(code), 8 * self.width)
    return self.dec_in(code + self.b_dec.permute(2, 0, 1))

  def forward(self, x, eps_q, eps_p):
    """(mean, logvar, reconstruction, prior sample, u_rec, u_prior) of images x
    [B, 3, 64, 64]; eps_q, eps_p [B, *latent_shape]. The generation LSTM and dec_in run
    once over both latents; the decoder runs on each half (its own BN statistics)."""
    mean, logvar = self.encode(x)
    z = torch.cat([mean + torch.exp(0.5 * logvar) * eps_q, eps_p])  # [2B, *latent]
    u = self.generation_code(z)
    h_rec, h_prior = self.decoder_input(u).chunk(2)
    u_rec, u_prior = u.chunk(2)
    return (mean, logvar, self.decoder(h_rec), self.decoder(h_prior), u_rec, u_prior)


class Discriminator(nn.Module):
  """crvae_jax Discriminator (no BN): trunk and the real/fake head. `dropout` is the
  rate of both dropouts (0.5; the equivalence check sets 0)."""

  def __init__(self, width: int, hidden: int, num_kernels: int, kernel_dim: int):
    super().__init__()
    c, self.dropout = width, 0.5
    self.num_kernels, self.kernel_dim = num_kernels, kernel_dim
    self.trunk = nn.ModuleList(
        ref.make_conv(i, o, k, 1, k // 2, bias=True)
        for i, o, k in ((3, 2 * c, 5), (2 * c, 4 * c, 5), (4 * c, 8 * c, 5),
                        (8 * c, 8 * c, 3)))
    self.dense = make_linear(HW * HW * 8 * c, hidden)
    self.minibatch_kernel = nn.Parameter(0.05 * torch.randn(hidden,
                                                            num_kernels * kernel_dim))
    self.out = make_linear(hidden + num_kernels, 1)

  def features(self, x):
    """Trunk: [N, 3, 64, 64] -> [N, 8c, 4, 4]; conv, maxpool 2 (halves H and W), ReLU
    (after the pool: they commute), spatial dropout."""
    for conv in self.trunk:
      x = F.relu(F.max_pool2d(conv(x), 2))
      x = F.dropout2d(x, self.dropout, self.training)
    return x

  def minibatch(self, h):
    """Minibatch discrimination: [N, A] -> [N, K], o_k(x_i) = sum_j exp(-|M_ik - M_jk|_1)
    over the whole batch (i itself included)."""
    m = (h @ self.minibatch_kernel).reshape(h.shape[0], self.num_kernels,
                                            self.kernel_dim).transpose(0, 1)  # [K, N, D]
    # L1 distances by torch.cdist: ~3x faster than broadcasting, forward + backward.
    distance = torch.cdist(m, m, p=1)  # [K, N, N]
    return torch.exp(-distance).sum(-1).T  # [N, K]

  def logit(self, f):
    """Real/fake logits [N] of trunk features f [N, 8c, 4, 4]."""
    h = self.dense(nhwc_flat(f))  # [N, hidden]
    h = h * torch.rsqrt(h.square().sum(-1, keepdim=True) + 1e-12)  # L2-normalise
    h = F.relu(F.dropout(h, self.dropout, self.training))
    return self.out(torch.cat([h, self.minibatch(h)], -1))[:, 0]


class MIHead(nn.Module):
  """crvae_jax MIHead: trunk features [N, 8c, 4, 4] -> u_hat [N, L, 4, 4]."""

  def __init__(self, feature_channels: int, latent_channels: int):
    super().__init__()
    lat = self.latent_channels = latent_channels
    self.conv0, self.bn0 = ref.make_conv(feature_channels, lat, 3, 1, 1), ref.make_bn(lat)
    self.conv1, self.bn1 = ref.make_conv(lat, lat, 1), ref.make_bn(lat)
    self.dense = make_linear(HW * HW * lat, HW * HW * lat)

  def forward(self, f):
    h = F.leaky_relu(self.bn0(self.conv0(f)), 0.2)
    h = F.leaky_relu(self.bn1(self.conv1(h)), 0.1)
    return from_nhwc_flat(self.dense(nhwc_flat(h)), self.latent_channels)


class Stage1(nn.Module):
  """The three networks of a Stage1 run: gen, disc and mi (None without the MI term)."""

  def __init__(self, gen: RgbVAE, disc: Discriminator, mi: MIHead | None):
    super().__init__()
    self.gen, self.disc, self.mi = gen, disc, mi


def model_from_config(config, channels_last: bool = True) -> Stage1:
  """Random-init networks of a Stage1 config (experiments/configs/rgb.py)."""
  m = config.model
  gen = RgbVAE(m.variant, m.num_blocks, m.width, m.lstm_hidden, m.latent_channels)
  disc = Discriminator(m.width, m.disc_hidden, m.minibatch_kernels,
                       m.minibatch_kernel_dim)
  mi = MIHead(8 * m.width, m.latent_channels) if config.objective.kappa > 0 else None
  model = Stage1(gen, disc, mi)
  return model.to(memory_format=CHANNELS_LAST) if channels_last else model


def is_lstm_name(name: str) -> bool:
  """crvae_jax.train.optimizer.is_lstm_path on a torch parameter name."""
  return any("lstm" in part for part in name.split("."))


def param_groups(model: Stage1) -> dict:
  """Trainable parameters by optimizer group: 'g_default', 'g_lstm' (generator + MI
  head), 'd_trunk', 'd_heads' (discriminator). nn.LSTM's frozen bias_hh are left out."""
  groups = {k: [] for k in ("g_default", "g_lstm", "d_trunk", "d_heads")}
  for name, p in model.named_parameters():
    if not p.requires_grad:
      continue
    if name.startswith("disc."):
      groups["d_trunk" if name.startswith("disc.trunk.") else "d_heads"].append(p)
    else:
      groups["g_lstm" if is_lstm_name(name) else "g_default"].append(p)
  return groups


def param_counts(model: Stage1) -> dict:
  """Trainable parameters per network (gen, mi, disc, all) and per optimizer group."""
  n = lambda ps: sum(p.numel() for p in ps if p.requires_grad)
  counts = {"gen": n(model.gen.parameters()), "disc": n(model.disc.parameters()),
            "mi": n(model.mi.parameters()) if model.mi is not None else 0}
  counts["all"] = counts["gen"] + counts["disc"] + counts["mi"]
  counts.update({k: n(v) for k, v in param_groups(model).items()})
  return counts


def flax_param_counts(config) -> dict:
  """`param_counts`'s keys for the Flax networks of `config` (shapes only)."""
  import jax  # pylint: disable=g-import-not-at-top
  from benchmarks import gan_throughput  # pylint: disable=g-import-not-at-top
  from crvae_jax.families import stage1  # pylint: disable=g-import-not-at-top
  from crvae_jax.train import optimizer  # pylint: disable=g-import-not-at-top
  state = stage1.init_state(config, abstract=True)
  counts = dict(gan_throughput.param_counts(state), g_default=0, g_lstm=0, d_trunk=0,
                d_heads=0)
  size = lambda x: math.prod(x.shape)
  gm = {"gen": state.gen["params"], "mi": state.mi.get("params", {})}
  for prefix, params, labels in (
      ("g_", gm, optimizer.param_groups(gm)),
      ("d_", state.disc["params"], optimizer.trunk_or_heads(state.disc["params"]))):
    for leaf, label in zip(jax.tree.leaves(params), jax.tree.leaves(labels)):
      counts[prefix + label] += size(leaf)
  return counts


# --------------------------------------------------------------------------- training

class Weights(NamedTuple):
  """The loss weights and gate of config.objective (stage1_step.GanWeights)."""
  alpha1: float
  alpha2: float
  beta: float
  kappa: float
  max_d_accuracy: float

  @classmethod
  def from_config(cls, config):
    o = config.objective
    return cls(o.alpha1, o.alpha2, o.beta, o.kappa, o.max_d_accuracy)


def stage1_losses(model: Stage1, images, eps_q, eps_p, weights: Weights) -> dict:
  """The losses of one step on images [B, 3, 64, 64] (docs/objectives.md, O5-O8):
  loss_g, loss_d and the metrics the JAX step logs (recon_mse, kl, adv, mi,
  d_accuracy), each []. The discriminator batch is [B real | B/2 prior samples | B/2
  reconstructions]; the MI target is held constant."""
  b, half = images.shape[0], images.shape[0] // 2
  gen = model.gen
  mean, logvar, x_rec, x_prior, u_rec, u_prior = gen(images, eps_q, eps_p)
  fakes = torch.cat([x_prior[:half], x_rec[:half]])  # [B, 3, 64, 64]
  labels = torch.cat([torch.ones(b), torch.zeros(b)])
  # The trunk runs the real and the generated images as two batches (crvae_jax's
  # `features(split=)`), joined after it: the generator's backward pass then runs
  # nothing for the real images (autograd prunes their trunk, which leads to no
  # generator parameter). Dropout masks are drawn per batch: the same distribution.
  f = torch.cat([model.disc.features(images), model.disc.features(fakes)])  # [2B, ...]
  logits = model.disc.logit(f)  # [2B]
  loss_d = F.binary_cross_entropy_with_logits(logits, labels)
  accuracy = ((logits > 0) == (labels > 0.5)).float().mean()
  loss_adv = F.softplus(-logits[b:]).mean()  # -log D on the fakes
  recon = (x_rec - images).square().mean()
  kl = 0.5 * (torch.exp(logvar) + mean.square() - 1.0 - logvar)
  kl_blocks = (kl.reshape(b, gen.num_blocks, -1) if gen.variant == "vaegan" else
               ref.split_channel_blocks(kl, gen.num_blocks)).sum(-1)  # [B, T]
  t = gen.num_blocks
  w = torch.tensor([weights.alpha1] * min(3, t) + [weights.alpha2] * max(0, t - 3))
  kl_weighted = (kl_blocks * w).sum(-1).mean()
  loss_mi = torch.zeros(())
  if weights.kappa:
    target = torch.cat([u_prior[:half], u_rec[:half]]).detach()
    loss_mi = (model.mi(f[b:]) - target).square().mean()
  loss_g = recon + kl_weighted + weights.beta * loss_adv + weights.kappa * loss_mi
  return {"loss_g": loss_g, "loss_d": loss_d, "recon_mse": recon,
          "kl": kl_blocks.sum(-1).mean(), "adv": loss_adv, "mi": loss_mi,
          "d_accuracy": accuracy}


def make_optimizers(model: Stage1, config):
  """(generator + MI head Adam, discriminator Adam), fused, with crvae_jax's groups
  (`param_groups`; lr / lstm_lr_divisor for 'g_lstm', lr * disc_trunk_lr_factor for
  'd_trunk')."""
  o = config.optim
  if o.disc_warmup or o.halve_every_steps > 0:
    raise ValueError("the torch port has no lr schedule: config.optim.disc_warmup must "
                     f"be False and halve_every_steps 0, got {o.disc_warmup}, "
                     f"{o.halve_every_steps}")
  g = param_groups(model)
  adam = lambda groups: torch.optim.Adam(groups, betas=(o.b1, o.b2), eps=o.eps, fused=True)
  opt_g = adam([{"params": g["g_default"], "lr": o.learning_rate},
                {"params": g["g_lstm"], "lr": o.learning_rate / o.lstm_lr_divisor}])
  opt_d = adam([{"params": g["d_trunk"], "lr": o.learning_rate * o.disc_trunk_lr_factor},
                {"params": g["d_heads"], "lr": o.learning_rate}])
  return opt_g, opt_d


def train_batches(batch: int) -> list:
  """benchmarks.gan_throughput.random_images (the JAX side's numbers), as 4 batches
  [B, 3, 64, 64], channels_last."""
  images = torch.from_numpy(random_images(batch)).permute(0, 3, 1, 2)
  return [images[i::4].contiguous(memory_format=CHANNELS_LAST) for i in range(4)]


class GanTrainer:
  """The Stage1 step of `model` at config.train.batch_size, optimizers kept across
  calls, run as `variant`; with `warm`, the first step (and any compilation) runs on
  construction (`startup_s`)."""

  def __init__(self, model: Stage1, config, variant: str = "eager", warm: bool = True):
    t0 = time.perf_counter()
    self.model, self.batch = model, config.train.batch_size
    if self.batch % 2:
      raise ValueError(f"config.train.batch_size={self.batch} must be even (50/25/25)")
    self.weights = Weights.from_config(config)
    self.clip = config.optim.lstm_grad_clip
    self.opt_g, self.opt_d = make_optimizers(model, config)
    groups = param_groups(model)
    self.lstm_params = groups["g_lstm"]
    self.g_params = groups["g_default"] + groups["g_lstm"]
    self.d_params = groups["d_trunk"] + groups["d_heads"]
    if ref.VARIANTS[ref.check_variant(variant)] is not None:
      # Two backward passes through the compiled graphs (retain_graph=True) need their
      # saved tensors twice: AOT autograd must not donate them to the first.
      torch._functorch.config.donated_buffer = False  # pylint: disable=protected-access
    self.loss_fn = ref.compiled(functools.partial(stage1_losses, model,
                                                  weights=self.weights), variant)
    self.batches = train_batches(self.batch)
    self.gated = []  # 1.0 for every step whose discriminator update was skipped
    model.train()
    if warm:
      self._steps(1)
    self.startup_s = time.perf_counter() - t0

  def step(self, images, eps_q=None, eps_p=None, grad_norms: bool = False) -> dict:
    """One update on images [B, 3, 64, 64] in [-1, 1]; eps_q, eps_p [B, *latent]
    (None: drawn here). Returns the losses and metrics (detached), d_update_skipped,
    and with grad_norms the global norms of both gradients (before clipping)."""
    shape = (self.batch,) + self.model.gen.latent_shape
    eps_q = torch.randn(shape) if eps_q is None else eps_q
    eps_p = torch.randn(shape) if eps_p is None else eps_p
    if len(shape) == 4:
      eps_q = eps_q.contiguous(memory_format=CHANNELS_LAST)
      eps_p = eps_p.contiguous(memory_format=CHANNELS_LAST)
    self.opt_g.zero_grad(set_to_none=True)
    self.opt_d.zero_grad(set_to_none=True)
    out = self.loss_fn(images, eps_q, eps_p)
    out["loss_g"].backward(inputs=self.g_params, retain_graph=True)
    out["loss_d"].backward(inputs=self.d_params)
    out = {k: v.detach() for k, v in out.items()}
    if grad_norms:
      norm = lambda ps: torch.linalg.vector_norm(
          torch.stack([torch.linalg.vector_norm(p.grad) for p in ps]))
      out.update(grad_norm_g=norm(self.g_params), grad_norm_d=norm(self.d_params))
    if self.lstm_params:  # (VAE-GAN has none)
      torch.nn.utils.clip_grad_value_(self.lstm_params, self.clip, foreach=True)
    self.opt_g.step()
    apply_d = bool(out["d_accuracy"] <= self.weights.max_d_accuracy)  # the gate
    if apply_d:
      self.opt_d.step()
    out["d_update_skipped"] = torch.tensor(0.0 if apply_d else 1.0)
    self.gated.append(float(out["d_update_skipped"]))
    return out

  def _steps(self, n: int, first: int = 0) -> dict:
    if n < 1:
      raise ValueError(f"steps must be >= 1, got {n}")
    for i in range(n):
      out = self.step(self.batches[(first + i) % 4])
    return out

  def run(self, steps: int, warmup: int = 1) -> float:
    """Train images/s (real images per step = train.batch_size) over `steps` steps
    after `warmup` untimed ones."""
    self.model.train()
    if warmup:
      self._steps(warmup)
    t = time.perf_counter()
    out = self._steps(steps, first=1)
    per_s = steps * self.batch / (time.perf_counter() - t)
    if not (math.isfinite(float(out["loss_g"])) and math.isfinite(float(out["loss_d"]))):
      raise FloatingPointError(f"non-finite losses {float(out['loss_g'])}, "
                               f"{float(out['loss_d'])}")
    return per_s


# --------------------------------------------------------------------------- JAX weights

def _copy(param: torch.Tensor, value) -> None:
  value = torch.from_numpy(np.asarray(value, np.float32).copy())
  if param.shape != value.shape:
    raise ValueError(f"shape mismatch: torch {tuple(param.shape)}, jax (converted) "
                     f"{tuple(value.shape)}")
  with torch.no_grad():
    param.copy_(value)


def _load_conv(conv, p) -> int:
  _copy(conv.weight, np.asarray(p["kernel"]).transpose(3, 2, 0, 1))  # HWIO -> OIHW
  if conv.bias is not None:
    _copy(conv.bias, p["bias"])
  return len(p)


def _load_deconv(deconv, p) -> int:
  _copy(deconv.weight, np.asarray(p["kernel"]).transpose(2, 3, 0, 1))  # HWIO -> IOHW
  return len(p)


def _load_dense(linear, p) -> int:
  _copy(linear.weight, np.asarray(p["kernel"]).T)
  if linear.bias is not None:
    _copy(linear.bias, p["bias"])
  return len(p)


def _load_bn(bn, p, stats) -> int:
  _copy(bn.weight, p["scale"])
  _copy(bn.bias, p["bias"])
  if stats is not None:
    _copy(bn.running_mean, stats["mean"])
    _copy(bn.running_var, stats["var"])
  return 2


def _load_lstm(lstm, p) -> int:
  for k in range(lstm.num_layers):
    layer = p[f"layer{k}"]
    _copy(getattr(lstm, f"weight_ih_l{k}"), np.asarray(layer["input_kernel"]).T)
    _copy(getattr(lstm, f"weight_hh_l{k}"), np.asarray(layer["recurrent_kernel"]).T)
    _copy(getattr(lstm, f"bias_ih_l{k}"), layer["bias"])
    with torch.no_grad():
      getattr(lstm, f"bias_hh_l{k}").zero_()
  return 3 * lstm.num_layers


def _load_gen(gen: RgbVAE, p, s) -> int:
  s = s or {}
  n = 0
  enc, enc_s = p["encoder"], s.get("encoder", {})
  for i, (conv, bn) in enumerate(zip(gen.encoder.convs, gen.encoder.bns)):
    n += _load_conv(conv, enc[f"Conv_{i}"])
    n += _load_bn(bn, enc[f"BatchNorm_{i}"], enc_s.get(f"BatchNorm_{i}"))
  dec, dec_s = p["decoder"], s.get("decoder", {})
  n += _load_bn(gen.decoder.bn_in, dec["BatchNorm_0"], dec_s.get("BatchNorm_0"))
  count = {"deconv": 0, "conv": 0}
  for i, ((kind, *_), layer, bn) in enumerate(zip(gen.decoder.spec, gen.decoder.layers,
                                                  gen.decoder.bns)):
    name = ("ConvTranspose_" if kind == "deconv" else "Conv_") + str(count[kind])
    count[kind] += 1
    n += (_load_deconv if kind == "deconv" else _load_conv)(layer, dec[name])
    n += _load_bn(bn, dec[f"BatchNorm_{i + 1}"], dec_s.get(f"BatchNorm_{i + 1}"))
  n += _load_conv(gen.decoder.out, dec[f"Conv_{count['conv']}"])
  if gen.variant == "vaegan":
    for name in ("enc_mean", "enc_logvar", "dec_in"):
      n += _load_dense(getattr(gen, name), p[name])
    return n
  post, post_s = p["posterior_block"], s.get("posterior_block", {})
  pb = gen.posterior_block
  n += _load_conv(pb.mean, post["mean"]) + _load_lstm(pb.lstm, post["lstm"])
  n += _load_bn(pb.lstm_bn, post["lstm_bn"], post_s.get("lstm_bn"))
  n += _load_dense(pb.logvar, post["logvar"])
  _copy(pb.b_enc, post["b_enc"])
  gb, gp = gen.generator_block, p["generator_block"]
  n += _load_lstm(gb.lstm, gp["lstm"]) + _load_dense(gb.out, gp["out"])
  _copy(gen.b_dec, p["b_dec"])
  n += _load_conv(gen.dec_in, p["dec_in"])
  return n + 2


def _load_disc(disc: Discriminator, p) -> int:
  n = sum(_load_conv(conv, p[f"trunk_{i}"]) for i, conv in enumerate(disc.trunk))
  n += _load_dense(disc.dense, p["dense"]) + _load_dense(disc.out, p["out"])
  _copy(disc.minibatch_kernel, p["minibatch"]["kernel"])
  return n + 1


def _load_mi(mi: MIHead, p, s) -> int:
  s = s or {}
  n = _load_conv(mi.conv0, p["Conv_0"]) + _load_conv(mi.conv1, p["Conv_1"])
  n += _load_bn(mi.bn0, p["BatchNorm_0"], s.get("BatchNorm_0"))
  n += _load_bn(mi.bn1, p["BatchNorm_1"], s.get("BatchNorm_1"))
  return n + _load_dense(mi.dense, p["Dense_0"])


def load_jax_state(model: Stage1, state) -> None:
  """Copies a crvae_jax GanState's parameters and BN statistics into `model` (layouts
  converted: conv kernels HWIO -> OIHW, transposed convs HWIO -> IOHW, dense kernels
  transposed, LSTM kernels transposed with bias_hh = 0). Every JAX parameter array is
  copied exactly once (ValueError otherwise, or on any shape mismatch)."""
  import jax  # pylint: disable=g-import-not-at-top
  parts = [(state.gen["params"], _load_gen(model.gen, state.gen["params"],
                                           state.gen.get("batch_stats")))]
  parts.append((state.disc["params"], _load_disc(model.disc, state.disc["params"])))
  if model.mi is not None:
    parts.append((state.mi["params"], _load_mi(model.mi, state.mi["params"],
                                               state.mi.get("batch_stats"))))
  for params, copied in parts:
    if copied != len(jax.tree.leaves(params)):
      raise ValueError(f"copied {copied} of {len(jax.tree.leaves(params))} JAX arrays")


# --------------------------------------------------------------------------- checks

def check_param_counts(config) -> dict:
  """AssertionError unless the port has the Flax networks' parameter count per
  network and per optimizer group; returns the counts."""
  torch.manual_seed(0)
  got, want = param_counts(model_from_config(config)), flax_param_counts(config)
  assert got == want, f"parameter counts differ: torch {got}, flax {want}"
  return got


def _no_dropout(next_fun, args, kwargs, context):
  """A flax.linen method interceptor: every nn.Dropout is the identity."""
  import flax.linen as fnn  # pylint: disable=g-import-not-at-top
  if isinstance(context.module, fnn.Dropout) and context.method_name == "__call__":
    return args[0]
  return next_fun(*args, **kwargs)


class JaxStep(NamedTuple):
  """One step of crvae_jax's Stage1 step without dropout (`jax_reference_step`)."""
  state: object  # GanState before the step, host arrays
  images: np.ndarray  # [B, 64, 64, 3] in [-1, 1]
  eps: np.ndarray  # the step's latent noise [B, 2, *latent_shape] (eps_q, eps_p)
  metrics: dict  # its metrics, numpy
  new_state: object  # GanState after the step, host arrays


def jax_reference_step(config, seed: int = 0) -> JaxStep:
  """crvae_jax's Stage1 step (stage1.Family.make_step, one device) on random images,
  every flax Dropout intercepted to the identity (its masks cannot be shared)."""
  import flax.linen as fnn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from crvae_jax import randomness, sharding  # pylint: disable=g-import-not-at-top
  from crvae_jax.families import stage1  # pylint: disable=g-import-not-at-top
  config = config.copy_and_resolve_references()
  config.train.num_devices = 1
  b = config.train.batch_size
  family = stage1.Family(config, mesh=sharding.make_mesh(1))
  state = jax.device_get(family.init_state())  # (the step donates its input)
  images = np.random.default_rng(seed).uniform(-1, 1, (b, 64, 64, 3)).astype(np.float32)
  # The step's latent noise, as stage1_step._per_device draws it at step 0 on one device.
  keys = randomness.example_keys(jax.random.fold_in(jax.random.key(config.train.seed), 0),
                                 np.arange(b))
  eps = np.asarray(randomness.normals(keys, np.arange(2), family.parts.model.latent_shape))
  with fnn.intercept_methods(_no_dropout):
    step = family.make_step()  # traced (and compiled) here, inside the interceptor
    new_state, metrics = step(sharding.replicate(family.mesh, state),
                              sharding.shard_batch(family.mesh, images))
  return JaxStep(state, images, eps, {k: np.asarray(v) for k, v in metrics.items()},
                 jax.device_get(new_state))


def check_step_against_jax(config, seed: int = 0, rtol: float = 2e-4,
                           reference: JaxStep | None = None) -> dict:
  """`jax_reference_step` (or `reference`, a step of the same config and seed) against
  one `GanTrainer.step` from the same weights (the JAX state copied into the port) on
  the same images and latent noise, without dropout: the losses, the accuracy, the
  gate's decision, both gradient norms, and every parameter after the update (Adam's
  first step is ~lr * sign(grad), so this checks the gradients' signs, the learning
  rate of every group and the gate) must agree. Returns the JAX metrics."""
  ref_step = reference or jax_reference_step(config, seed)
  torch.manual_seed(seed)
  model = model_from_config(config)
  load_jax_state(model, ref_step.state)
  model.disc.dropout = 0.0
  to_torch = lambda a: torch.from_numpy(np.ascontiguousarray(
      a.transpose(0, 3, 1, 2) if a.ndim == 4 else a))  # NHWC -> NCHW
  trainer = GanTrainer(model, config, warm=False)
  got = trainer.step(to_torch(ref_step.images).contiguous(memory_format=CHANNELS_LAST),
                     to_torch(ref_step.eps[:, 0]), to_torch(ref_step.eps[:, 1]),
                     grad_norms=True)
  for key in ("loss_g", "loss_d", "recon_mse", "kl", "adv", "mi", "d_accuracy",
              "d_update_skipped", "grad_norm_g", "grad_norm_d"):
    np.testing.assert_allclose(got[key].numpy(), ref_step.metrics[key], rtol=rtol,
                               atol=1e-6, err_msg=key)
  want = model_from_config(config)
  load_jax_state(want, ref_step.new_state)
  lr = config.optim.learning_rate
  num_close = num = 0
  for (name, p), q in zip(model.named_parameters(), want.parameters()):
    if not p.requires_grad:
      continue
    # Adam's first step moves each weight by lr * g / (|g| + eps), ~lr * sign(g). A
    # small gradient element is a sum of cancelling terms whose rounding (a few 1e-7
    # of the terms) can flip its sign (seen at CPU scale up to 3% of the tensor's
    # largest |g|): below 5% it may move the weight by up to 2 lr either way; every
    # other weight must land where JAX's does.
    diff = (p.detach() - q.detach()).abs()
    close = diff <= 1e-3 * lr + 1e-6 * q.detach().abs()
    g = p.grad.abs()
    bad = ~close & (g > 0.05 * g.max())
    assert not bad.any() and diff.max() <= 2.01 * lr, (
        f"{name}: after the step |torch - jax| up to {diff.max():.3g} (lr {lr:g}); "
        f"{int(bad.sum())} of {diff.numel()} differ with |grad| > 5% of max |grad|")
    num_close, num = num_close + int(close.sum()), num + close.numel()
  # (Not a check that passes because most gradients are tiny: most weights match.)
  assert num_close >= 0.95 * num, f"only {num_close} of {num} parameters match JAX's"
  return ref_step.metrics


def equivalence_check(verbose: bool = True) -> None:
  """`check_param_counts` for both variants at both scales, then
  `check_step_against_jax` for both variants at CPU scale."""
  for row in GAN_ROWS:
    for scale in ("cpu", "paper"):
      counts = check_param_counts(config_at_scale(row, scale))
      if verbose:
        print(f"{row} {scale}: parameters = Flax's: {counts}")
  for row in GAN_ROWS:
    check_step_against_jax(config_at_scale(row, "cpu"))
  if verbose:
    print("equivalence_check: ok (parameter counts per network and optimizer group = "
          "Flax; one step's losses, accuracy, gate, gradient norms and updated "
          "parameters = the JAX step's)")


# --------------------------------------------------------------------------- CLI

def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--scales", default="cpu,paper")
  p.add_argument("--row", default="crvaegan", help=f"one of {list(GAN_ROWS)}")
  p.add_argument("--variants", default="eager,compile",
                 help=f"comma-separated, of {list(ref.VARIANTS)}")
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--check", action=argparse.BooleanOptionalAction, default=True,
                 help="run equivalence_check() first")
  args = p.parse_args()
  variants = [ref.check_variant(v) for v in args.variants.split(",")]
  ref.fresh_compile_cache()
  torch.set_num_threads(os.cpu_count())
  if args.check:
    equivalence_check()
  print(f"# {machine_line(ref.runtime_line(args.variants))}")
  print("| row | scale | variant | params gen / MI / disc | start-up s | train img/s | "
        "D updates gated |")
  print("|---" * 7 + "|")
  for scale in args.scales.split(","):
    config = config_at_scale(args.row, scale)
    for variant in variants:
      torch.manual_seed(0)
      torch.compiler.reset()
      model = model_from_config(config)
      n = param_counts(model)
      trainer = GanTrainer(model, config, variant)
      ips = trainer.run(args.steps)
      print(f"| {args.row} | {scale} | {variant} | {n['gen']:,} / {n['mi']:,} / "
            f"{n['disc']:,} | {trainer.startup_s:.1f} | {ips:.1f} | "
            f"{sum(trainer.gated):.0f} of {len(trainer.gated)} |", flush=True)


if __name__ == "__main__":
  host_memory.reexec_with_hugepages()
  main()
