r"""PyTorch port of the MNIST crVAE (variant `crvae`), as an optional speed reference.

  pip install -r requirements-torch.txt
  python benchmarks/torch_reference.py --scales=cpu,paper --steps=10

torch is not a dependency of crvae_jax; only this script needs it. It builds the same
network as `crvae_jax.models.mnist.MnistVAE(variant='crvae')` (checked: the parameter
count equals the Flax model's, both scales) and times, as benchmarks/train_throughput.py:

  train img/s      global batch 128 (config.train.batch_size), dynamic binarization, one
                   latent sample, loss = -log p(x|z) + sum_t w_t KL_t (analytic KL per
                   channel block, w_t = beta: crvae_jax.objectives.elbo), backward, Adam.
  eval samples/s   the IS-NLL estimator's decoder samples/s: each batch of test images is
                   encoded once, then `chunk` latent samples per image are decoded at a
                   time, with the log weights folded into a running log-sum-exp, under
                   torch.inference_mode(); samples = images x K. The same images, K,
                   chunk (= min(config chunk, K), as crvae_jax.likelihood does) and batch
                   as train_throughput.py (200 images, K=20 by default).

Differences from the JAX training step, none of which should matter for speed: Adam with
the same two groups (LSTM parameters at lr / T, their gradients clipped element-wise to
+-5; everything else at lr) but no lr halving schedule (the JAX schedule is a constant
within any benchmark run); no non-finite-step guard, gradient/parameter norms or metrics;
BatchNorm's running variance uses torch's unbiased update (Flax: biased). Initialisers
follow the Flax ones in spirit (LeCun-normal, orthogonal recurrent kernels, forget-gate
bias 1) but weights are not ported: numerics are not compared with JAX, only shapes and
the building blocks' semantics (`equivalence_check`).

Layouts: convolutions run NCHW tensors in torch's channels_last memory format (i.e. NHWC
in memory, like the JAX model); parameters that the Flax model keeps in NHWC order (the
dense mean head's input/output, b_enc, b_dec) are kept in that order here too.
"""

import argparse
import math
import os
import sys
import time

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top
from benchmarks.nll_eval import machine_line
from crvae_jax import host_memory
from crvae_jax.models.channel_recurrent import LOGVAR_LIMIT, LOGVAR_LINEAR
from experiments.configs import mnist as mnist_configs

LOG_2PI = math.log(2 * math.pi)
LATENT_HW = 4  # the encoder's output and the latent are 4x4
CHANNELS_LAST = torch.channels_last


# --------------------------------------------------------------------------- blocks

def crelu(x: torch.Tensor) -> torch.Tensor:
  """relu(concat(x, -x)) along channels (dim 1, NCHW): doubles the channels."""
  return F.relu(torch.cat([x, -x], dim=1))


def leaky_relu(x: torch.Tensor) -> torch.Tensor:
  return F.leaky_relu(x, 0.1)


def bounded_logvar(raw: torch.Tensor) -> torch.Tensor:
  """crvae_jax.models.channel_recurrent.bounded_logvar: identity inside LOGVAR_LINEAR,
  bending smoothly (tanh) towards LOGVAR_LIMIT outside."""
  (lo, hi), (lo_limit, hi_limit) = LOGVAR_LINEAR, LOGVAR_LIMIT
  above = hi + (hi_limit - hi) * torch.tanh((raw - hi) / (hi_limit - hi))
  below = lo - (lo - lo_limit) * torch.tanh((lo - raw) / (lo - lo_limit))
  return torch.where(raw > hi, above, torch.where(raw < lo, below, raw))


def split_channel_blocks(a: torch.Tensor, num_blocks: int) -> torch.Tensor:
  """[B, C, H, W] -> [B, T, H*W*C/T]: step t holds channels t*C/T ... (t+1)*C/T - 1,
  flattened in (H, W, c) order, exactly as the JAX split of the NHWC tensor."""
  b, c, h, w = a.shape
  if c % num_blocks:
    raise ValueError(f"{c} channels cannot be split into {num_blocks} blocks")
  a = a.permute(0, 2, 3, 1)  # NHWC: a view for channels_last tensors
  a = a.reshape(b, h, w, num_blocks, c // num_blocks).permute(0, 3, 1, 2, 4)
  return a.reshape(b, num_blocks, h * w * (c // num_blocks))  # [B, T, H*W*C/T]


def merge_channel_blocks(seq: torch.Tensor, height: int, width: int) -> torch.Tensor:
  """Inverse of `split_channel_blocks`: [B, T, H*W*c] -> [B, T*c, H, W], channels_last."""
  b, t, n = seq.shape
  c = n // (height * width)
  seq = seq.reshape(b, t, height, width, c).permute(0, 2, 3, 1, 4)  # [B, H, W, T, c]
  return seq.reshape(b, height, width, t * c).permute(0, 3, 1, 2)  # NCHW view of NHWC


class LSTMLayer(nn.Module):
  """One LSTM layer over [B, T, D] -> hidden states [B, T, H], as crvae_jax's LSTMLayer:
  one input projection for the whole sequence (one bias), then the recurrent cell over
  the T steps from a zero state. Gate order input, forget, cell, output (torch's too)."""

  def __init__(self, in_dim: int, hidden: int):
    super().__init__()
    self.hidden = hidden
    self.input_kernel = nn.Parameter(torch.empty(in_dim, 4 * hidden))
    self.recurrent_kernel = nn.Parameter(torch.empty(hidden, 4 * hidden))
    self.bias = nn.Parameter(torch.zeros(4 * hidden))
    with torch.no_grad():
      nn.init.normal_(self.input_kernel, std=1.0 / math.sqrt(in_dim))  # ~LeCun normal
      nn.init.orthogonal_(self.recurrent_kernel)
      self.bias[hidden:2 * hidden] = 1.0  # forget gate

  def forward(self, xs: torch.Tensor) -> torch.Tensor:
    b, t, d = xs.shape
    gates_x = torch.addmm(self.bias, xs.reshape(b * t, d), self.input_kernel)
    gates_x = gates_x.reshape(b, t, 4 * self.hidden)
    h = c = xs.new_zeros(b, self.hidden)
    outs = []
    for step in range(t):
      gates = torch.addmm(gates_x[:, step], h, self.recurrent_kernel)
      i, f, g, o = gates.chunk(4, dim=-1)
      c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
      h = torch.sigmoid(o) * torch.tanh(c)
      outs.append(h)
    return torch.stack(outs, dim=1)


class StackedLSTM(nn.Module):
  def __init__(self, in_dim: int, hidden: int, num_layers: int = 2):
    super().__init__()
    self.layers = nn.ModuleList(
        LSTMLayer(in_dim if i == 0 else hidden, hidden) for i in range(num_layers))

  def forward(self, xs):
    for layer in self.layers:
      xs = layer(xs)
    return xs


def _conv(cin, cout, kernel, stride=1, padding=0, bias=False):
  conv = nn.Conv2d(cin, cout, kernel, stride, padding, bias=bias)
  nn.init.normal_(conv.weight, std=1.0 / math.sqrt(cin * kernel * kernel))  # ~LeCun
  if bias:
    nn.init.zeros_(conv.bias)
  return conv


def _bn(channels):
  return nn.BatchNorm2d(channels, eps=1e-5, momentum=0.1)  # = Flax momentum 0.9


# --------------------------------------------------------------------------- model

class Encoder(nn.Module):
  """crvae_jax MnistEncoder: [B, 1, 28, 28] -> [B, 8c, 4, 4]; convs without bias, BN,
  CReLU on the strided layers (doubling the channels), LeakyReLU(0.1) on the others."""

  def __init__(self, width: int, last_kernel: int = 3):
    super().__init__()
    c, k = width, last_kernel
    # (in, out, kernel, stride, padding, activation)
    spec = [(1, c, 5, 2, 3, crelu),  # 15x15, 2c after CReLU
            (2 * c, 2 * c, 3, 1, 1, leaky_relu),
            (2 * c, 2 * c, 3, 2, 1, crelu),  # 8x8, 4c
            (4 * c, 4 * c, 3, 1, 1, leaky_relu),
            (4 * c, 4 * c, k, 2, k // 2, crelu),  # 4x4, 8c
            (8 * c, 8 * c, 3, 1, 1, leaky_relu)]
    self.convs = nn.ModuleList(_conv(i, o, kk, s, p) for i, o, kk, s, p, _ in spec)
    self.bns = nn.ModuleList(_bn(o) for _, o, *_ in spec)
    self.acts = [a for *_, a in spec]

  def forward(self, x):
    for conv, bn, act in zip(self.convs, self.bns, self.acts):
      x = act(bn(conv(x)))
    return x


class Decoder(nn.Module):
  """crvae_jax MnistDecoder: [B, 8c, 4, 4] pre-BN features -> logits [B, 1, 28, 28]."""

  def __init__(self, width: int):
    super().__init__()
    c = width
    self.bn_in = _bn(8 * c)
    self.deconvs, self.deconv_bns = nn.ModuleList(), nn.ModuleList()
    self.convs, self.conv_bns = nn.ModuleList(), nn.ModuleList()
    cin = 8 * c
    for out, pad in ((8 * c, 1), (4 * c, 1), (2 * c, 2)):  # 8x8, 16x16, 30x30
      deconv = nn.ConvTranspose2d(cin, out, 4, 2, pad, bias=False)
      nn.init.normal_(deconv.weight, std=1.0 / math.sqrt(cin * 16))
      self.deconvs.append(deconv)
      self.deconv_bns.append(_bn(out))
      self.convs.append(_conv(out, out, 3, 1, 1))
      self.conv_bns.append(_bn(out))
      cin = out
    self.out = _conv(2 * c, 1, 3, 1, 0, bias=True)  # 30x30 -> 28x28

  def forward(self, h):
    h = leaky_relu(self.bn_in(h))
    for deconv, bn1, conv, bn2 in zip(self.deconvs, self.deconv_bns, self.convs,
                                      self.conv_bns):
      h = leaky_relu(bn1(deconv(h)))
      h = leaky_relu(bn2(conv(h)))
    return self.out(h)


class ChannelRecurrentPosterior(nn.Module):
  """q(z|x) with mean_head='dense': mean = Dense(no bias) of the flattened (NHWC order)
  features + b_enc [H, W, L]; log-variance = 2-layer LSTM over the features' T channel
  blocks, then a Dense(hidden -> H*W*L/T) shared across steps."""

  def __init__(self, feature_channels: int, num_blocks: int, latent_channels: int,
               hidden: int, hw: int = LATENT_HW):
    super().__init__()
    self.num_blocks, self.latent_channels, self.hw = num_blocks, latent_channels, hw
    n = hw * hw
    self.mean = nn.Linear(n * feature_channels, n * latent_channels, bias=False)
    self.b_enc = nn.Parameter(torch.zeros(hw, hw, latent_channels))
    self.lstm = StackedLSTM(n * feature_channels // num_blocks, hidden)
    self.logvar = nn.Linear(hidden, n * latent_channels // num_blocks)

  def forward(self, features):  # [B, C, H, W] -> mean, logvar [B, L, H, W]
    b, hw, lat = features.shape[0], self.hw, self.latent_channels
    mean = self.mean(features.permute(0, 2, 3, 1).reshape(b, -1))  # NHWC flatten
    mean = (mean.reshape(b, hw, hw, lat) + self.b_enc).permute(0, 3, 1, 2)
    hs = self.lstm(split_channel_blocks(features, self.num_blocks))  # [B, T, hidden]
    logvar = merge_channel_blocks(self.logvar(hs), hw, hw)
    return mean, bounded_logvar(logvar)


class ChannelRecurrentGenerator(nn.Module):
  """u = Dense(LSTM over z's T channel blocks), z and u [B, L, H, W]."""

  def __init__(self, num_blocks: int, latent_channels: int, hidden: int,
               hw: int = LATENT_HW):
    super().__init__()
    self.num_blocks, self.hw = num_blocks, hw
    block = hw * hw * latent_channels // num_blocks
    self.lstm = StackedLSTM(block, hidden)
    self.out = nn.Linear(hidden, block)

  def forward(self, z):
    hs = self.lstm(split_channel_blocks(z, self.num_blocks))
    return merge_channel_blocks(self.out(hs), self.hw, self.hw)


class CrVAE(nn.Module):
  """MnistVAE(variant='crvae'): channel-recurrent posterior and generation path."""

  def __init__(self, width: int = 32, lstm_hidden: int = 512, latent_channels: int = 64,
               num_blocks: int = 8):
    super().__init__()
    self.num_blocks, self.latent_channels = num_blocks, latent_channels
    self.encoder = Encoder(width, last_kernel=3)
    self.posterior = ChannelRecurrentPosterior(8 * width, num_blocks, latent_channels,
                                               lstm_hidden)
    self.generator = ChannelRecurrentGenerator(num_blocks, latent_channels, lstm_hidden)
    self.b_dec = nn.Parameter(torch.zeros(LATENT_HW, LATENT_HW, latent_channels))
    self.dec_in = _conv(latent_channels, 8 * width, 3, 1, 1)
    self.decoder = Decoder(width)

  @property
  def latent_shape(self):
    return (self.latent_channels, LATENT_HW, LATENT_HW)

  def encode(self, x):
    """x [B, 1, 28, 28] in {0, 1} -> mean, logvar [B, L, 4, 4]."""
    return self.posterior(self.encoder(x))

  def decode(self, z):
    """z [N, L, 4, 4] -> Bernoulli logits [N, 1, 28, 28]."""
    u = self.generator(z) + self.b_dec.permute(2, 0, 1)  # u + b_dec
    return self.decoder(self.dec_in(u))

  def forward(self, x, eps=None):
    """One latent sample per image (eps [B, L, 4, 4]; None: drawn here): logits
    [B, 1, 28, 28] and the analytic KL per channel block [B, T]."""
    mean, logvar = self.encode(x)
    if eps is None:
      eps = torch.randn_like(mean)
    z = mean + torch.exp(0.5 * logvar) * eps
    kl = 0.5 * (torch.exp(logvar) + mean.square() - 1.0 - logvar)
    return self.decode(z), split_channel_blocks(kl, self.num_blocks).sum(-1)


def build_model(width: int = 32, lstm_hidden: int = 512, latent_channels: int = 64,
                num_blocks: int = 8, channels_last: bool = True) -> CrVAE:
  """The `crvae` variant (random init), in channels_last memory format by default."""
  model = CrVAE(width, lstm_hidden, latent_channels, num_blocks)
  return model.to(memory_format=CHANNELS_LAST) if channels_last else model


def model_from_config(config, channels_last: bool = True) -> CrVAE:
  m = config.model
  if m.variant != "crvae":
    raise ValueError(f"the torch reference ports variant 'crvae' only, got {m.variant!r}")
  return build_model(m.width, m.lstm_hidden, m.latent_channels, m.num_blocks,
                     channels_last)


def num_params(model: nn.Module) -> int:
  return sum(p.numel() for p in model.parameters())


def flax_num_params(config) -> int:
  """Parameter count of the Flax model for `config` (shapes only: nothing runs)."""
  import jax
  from crvae_jax.train import setup
  model = setup.build_model(config)
  variables = jax.eval_shape(lambda: setup.init_variables(model, 0))
  return sum(math.prod(x.shape) for x in jax.tree.leaves(variables["params"]))


# --------------------------------------------------------------------------- objective

def bernoulli_log_likelihood(logits, x):
  """log Bern(x; sigmoid(logits)) summed over all but the leading axis."""
  return (x * logits - F.softplus(logits)).reshape(logits.shape[0], -1).sum(-1)


def block_weights(config) -> torch.Tensor:
  """crvae_jax.objectives.block_weights for config.objective: [T]."""
  t, beta = config.model.num_blocks, config.objective.beta
  first = config.objective.get("beta_first_blocks")
  first = beta if first is None else first
  return torch.tensor([first] * min(3, t) + [beta] * max(0, t - 3))


def elbo_loss(model: CrVAE, x, weights):
  """-(beta-weighted ELBO) averaged over the batch, one latent sample per image."""
  logits, kl_blocks = model(x)
  recon = bernoulli_log_likelihood(logits, x)
  return -(recon - (kl_blocks * weights).sum(-1)).mean()


def make_optimizer(model: nn.Module, config):
  """Adam with the JAX groups: LSTM parameters at lr / lstm_lr_divisor (their gradients
  clipped element-wise by `train_step`), the rest at lr. No lr schedule."""
  o = config.optim
  lstm = [p for n, p in model.named_parameters() if "lstm" in n]
  other = [p for n, p in model.named_parameters() if "lstm" not in n]
  return torch.optim.Adam(
      [{"params": other, "lr": o.learning_rate},
       {"params": lstm, "lr": o.learning_rate / o.lstm_lr_divisor}],
      betas=(o.b1, o.b2), eps=o.eps), lstm


def train_step(model, opt, lstm_params, clip, images_float, weights):
  """One update on images [B, 1, 28, 28] of intensities in [0, 1] (binarized here)."""
  x = torch.bernoulli(images_float)
  opt.zero_grad(set_to_none=True)
  loss = elbo_loss(model, x, weights)
  loss.backward()
  torch.nn.utils.clip_grad_value_(lstm_params, clip)
  opt.step()
  return loss.detach()


def train_throughput(model: CrVAE, config, steps: int, warmup: int):
  """Train images/s at config.train.batch_size after `warmup` untimed steps; also the
  time of the first step."""
  batch = config.train.batch_size
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (batch * 4, 1, 28, 28), dtype=np.uint8)
  batches = [torch.from_numpy(images[i::4].astype(np.float32) / 255.0)
             .contiguous(memory_format=CHANNELS_LAST) for i in range(4)]
  opt, lstm_params = make_optimizer(model, config)
  weights = block_weights(config)
  model.train()
  t = time.perf_counter()
  loss = train_step(model, opt, lstm_params, config.optim.lstm_grad_clip, batches[0],
                    weights)
  first = time.perf_counter() - t
  for i in range(1, warmup):
    train_step(model, opt, lstm_params, config.optim.lstm_grad_clip, batches[i % 4],
               weights)
  t = time.perf_counter()
  for i in range(steps):
    loss = train_step(model, opt, lstm_params, config.optim.lstm_grad_clip,
                      batches[i % 4], weights)
  per_s = steps * batch / (time.perf_counter() - t)
  if not torch.isfinite(loss):
    raise FloatingPointError(f"non-finite training loss {loss.item()}")
  return first, per_s


# --------------------------------------------------------------------------- IS-NLL

@torch.inference_mode()
def log_px_batch(model: CrVAE, x, num_samples: int, chunk: int):
  """Importance-sampled log p(x) [b] of x [b, 1, 28, 28] with K = num_samples, decoding
  `chunk` samples per image at a time (crvae_jax.likelihood: ceil(K / chunk) chunks of
  the full chunk, samples with index >= K masked out of the running log-sum-exp)."""
  b = x.shape[0]
  mean, logvar = model.encode(x)  # [b, L, 4, 4]
  mean, logvar = mean.unsqueeze(1), logvar.unsqueeze(1)  # [b, 1, L, 4, 4]
  std = torch.exp(0.5 * logvar)
  x_flat = x.reshape(b, 1, -1)  # [b, 1, 784]
  m = torch.full((b,), -math.inf)
  s = torch.zeros(b)
  for start in range(0, num_samples, chunk):
    eps = torch.randn((b, chunk) + model.latent_shape)
    z = mean + std * eps  # [b, chunk, L, 4, 4]
    log_q = -0.5 * (LOG_2PI + logvar + eps.square())  # (z - mean)^2 / var = eps^2
    log_p = -0.5 * (LOG_2PI + z.square())
    kl = (log_q - log_p).reshape(b, chunk, -1).sum(-1)  # [b, chunk]
    z = z.reshape((b * chunk,) + model.latent_shape).contiguous(
        memory_format=CHANNELS_LAST)
    logits = model.decode(z).reshape(b, chunk, -1)  # [b, chunk, 784]
    recon = (x_flat * logits - F.softplus(logits)).sum(-1)
    log_w = recon - kl
    valid = torch.arange(start, start + chunk) < num_samples
    log_w = torch.where(valid[None], log_w, -math.inf)
    new_m = torch.maximum(m, log_w.max(-1).values)
    s = s * torch.exp(m - new_m) + torch.exp(log_w - new_m[:, None]).sum(-1)
    m = new_m
  return m + torch.log(s) - math.log(num_samples)


def eval_samples_per_s(model: CrVAE, num_images: int, num_samples: int, chunk: int,
                       batch: int):
  """Decoder samples/s of the estimator over num_images random binary images (after one
  untimed batch); BatchNorm in inference mode."""
  chunk = min(chunk, num_samples)
  model.eval()
  rng = np.random.default_rng(1)
  images = torch.from_numpy(
      (rng.random((num_images, 1, 28, 28)) < 0.15).astype(np.float32))
  images = images.contiguous(memory_format=CHANNELS_LAST)
  log_px_batch(model, images[:batch], num_samples, chunk)  # warm-up
  t = time.perf_counter()
  out = [log_px_batch(model, images[lo:lo + batch], num_samples, chunk)
         for lo in range(0, num_images, batch)]
  per_s = num_images * num_samples / (time.perf_counter() - t)
  if not torch.isfinite(torch.cat(out)).all():
    raise FloatingPointError("non-finite log p(x) estimate")
  return per_s


# --------------------------------------------------------------------------- checks

def equivalence_check(batch: int = 3, verbose: bool = True) -> None:
  """Shape and building-block checks against the JAX model (CPU-scale config).

  Not a numerical comparison of the two models (weights are not ported). Checked:
  parameter counts; the shapes of the posterior, the latent and the logits against the
  Flax model's (torch NCHW [B, 1, 28, 28] = Flax [B, 28, 28, 1]); and, numerically, the
  pieces whose layout or semantics could silently differ: the channel-block split and
  merge, bounded_logvar, one LSTM layer and a 4x4 stride-2 transposed convolution, each
  with the same inputs and weights in both frameworks.
  """
  import jax
  import jax.numpy as jnp
  from crvae_jax.models import channel_recurrent as jcr
  from crvae_jax.models import layers as jlayers
  from crvae_jax.models import lstm as jlstm
  from crvae_jax.train import setup

  config = mnist_configs.get_config("crvae,cpu")
  torch.manual_seed(0)
  model = model_from_config(config)
  flax_model = setup.build_model(config)
  assert num_params(model) == flax_num_params(config), "parameter counts differ"

  # Shapes: Flax's sample_terms on [B, 28, 28, 1] vs torch's forward on [B, 1, 28, 28].
  x_np = (np.random.default_rng(0).random((batch, 28, 28, 1)) < 0.3).astype(np.float32)
  variables = jax.eval_shape(lambda: setup.init_variables(flax_model, 0))
  eps1 = jax.ShapeDtypeStruct((batch, 1) + flax_model.latent_shape, jnp.float32)
  flax_out = jax.eval_shape(lambda v, x, e: flax_model.apply(v, x, e), variables,
                            jax.ShapeDtypeStruct(x_np.shape, jnp.float32), eps1)
  x = torch.from_numpy(x_np).permute(0, 3, 1, 2).contiguous(memory_format=CHANNELS_LAST)
  for train in (True, False):
    model.train(train)
    with torch.no_grad():
      mean, logvar = model.encode(x)
      logits, kl = model(x, torch.randn_like(mean))
    nhwc = lambda t: tuple(t.permute(0, 2, 3, 1).shape)
    assert nhwc(mean) == nhwc(logvar) == (batch,) + flax_model.latent_shape, mean.shape
    assert nhwc(logits) == flax_out.logits.shape[:1] + flax_out.logits.shape[2:], (
        logits.shape, flax_out.logits.shape)
    assert tuple(kl.shape) == flax_out.kl_blocks_analytic.shape, kl.shape
    assert torch.isfinite(logits).all() and torch.isfinite(kl).all()
  model.eval()
  assert tuple(log_px_batch(model, x, 4, 3).shape) == (batch,)

  # Channel blocks: torch NCHW split/merge == JAX NHWC split/merge.
  a = np.random.default_rng(1).standard_normal((2, 4, 4, 16)).astype(np.float32)
  a_t = torch.from_numpy(a).permute(0, 3, 1, 2)
  seq = split_channel_blocks(a_t, 4)
  np.testing.assert_array_equal(seq.numpy(), np.asarray(jcr.split_channel_blocks(a, 4)))
  np.testing.assert_array_equal(merge_channel_blocks(seq, 4, 4).permute(0, 2, 3, 1)
                                .numpy(), a)

  raw = np.linspace(-40, 30, 141, dtype=np.float32)
  np.testing.assert_allclose(bounded_logvar(torch.from_numpy(raw)).numpy(),
                             np.asarray(jcr.bounded_logvar(raw)), rtol=1e-6, atol=1e-6)

  # One LSTM layer with the same weights.
  layer = LSTMLayer(12, 5)
  xs = np.random.default_rng(2).standard_normal((3, 4, 12)).astype(np.float32)
  params = {"params": {k: jnp.asarray(v.detach().numpy())
                       for k, v in layer.named_parameters()}}
  want = jlstm.LSTMLayer(5).apply(params, xs)
  with torch.no_grad():
    got = layer(torch.from_numpy(xs))
  np.testing.assert_allclose(got.numpy(), np.asarray(want), rtol=1e-5, atol=1e-5)

  # Transposed convolution (torch padding semantics), torch weight [Cin, Cout, K, K]
  # = Flax kernel [K, K, Cin, Cout] transposed; the padding-2 layer (16 -> 30) too.
  for pad, size in ((1, 4), (2, 16)):
    deconv = nn.ConvTranspose2d(6, 5, 4, 2, pad, bias=False)
    h = np.random.default_rng(3).standard_normal((2, size, size, 6)).astype(np.float32)
    kernel = deconv.weight.detach().numpy().transpose(2, 3, 0, 1)
    want = jlayers.conv_transpose_xla(h, kernel, 2, pad)
    with torch.no_grad():
      got = deconv(torch.from_numpy(h).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    np.testing.assert_allclose(got.numpy(), np.asarray(want), rtol=1e-4, atol=1e-4)
  if verbose:
    print(f"equivalence_check: ok (logits {tuple(logits.shape)} NCHW = Flax "
          f"{flax_out.logits.shape} [B, n, 28, 28, 1]; blocks, LSTM, deconv match)")


# --------------------------------------------------------------------------- CLI

def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--scales", default="cpu,paper")
  p.add_argument("--row", default="crvae")
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--warmup", type=int, default=1,
                 help="untimed train steps, the first included (>= 1)")
  p.add_argument("--eval_images", type=int, default=200)
  p.add_argument("--eval_samples", type=int, default=20)
  p.add_argument("--check", action=argparse.BooleanOptionalAction, default=True,
                 help="run equivalence_check() first")
  args = p.parse_args()
  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(0)
  if args.check:
    equivalence_check()
  runtime = f"torch {torch.__version__} cpu, {torch.get_num_threads()} threads, channels_last"
  print(f"# {machine_line(runtime)}")
  print("| row | scale | params torch | params flax | first step s | train img/s | "
        "eval K, chunk x batch | eval samples/s |")
  print("|---|---|---|---|---|---|---|---|")
  for scale in args.scales.split(","):
    config = mnist_configs.config_at_scale(args.row, scale)
    model = model_from_config(config)
    n_torch, n_flax = num_params(model), flax_num_params(config)
    assert n_torch == n_flax, f"{scale}: torch {n_torch} params, flax {n_flax}"
    first, train_ips = train_throughput(model, config, args.steps, max(1, args.warmup))
    chunk = min(config.eval.chunk_size, args.eval_samples)
    eval_sps = eval_samples_per_s(model, args.eval_images, args.eval_samples, chunk,
                                  config.eval.batch_size)
    print(f"| {args.row} | {scale} | {n_torch / 1e6:.2f} M ({n_torch:,}) | "
          f"{n_flax / 1e6:.2f} M ({n_flax:,}) | {first:.1f} | {train_ips:.1f} | "
          f"{args.eval_samples}, {chunk} x {config.eval.batch_size} | {eval_sps:.0f} |",
          flush=True)


if __name__ == "__main__":
  host_memory.reexec_with_hugepages()
  main()
