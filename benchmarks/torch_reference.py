r"""PyTorch port of the MNIST crVAE (variant `crvae`; also `cvae`, the same network
without the channel recurrence), as the speed reference.

  pip install -r requirements-torch.txt
  python -m benchmarks.torch_reference --scales=cpu,paper --steps=10 --variants=eager,compile

torch is not a dependency of crvae_jax; only the benchmarks and their tests need it.
(The Stage1 VAE-GAN / crVAE-GAN port, benchmarks/torch_gan_reference.py, imports its
building blocks from here.) It builds the same network as
`crvae_jax.models.mnist.MnistVAE(variant='crvae')` (or `variant='cvae'`: `ConvVAE`, no
LSTMs; checked: the trainable parameter count and the output shapes equal the Flax
model's) written as a PyTorch practitioner writes it for speed on a CPU (PyTorch 2.13):

  nn.LSTM          each channel-recurrent block's 2-layer LSTM is one `nn.LSTM` call
                   (batch_first, over the T channel blocks; on CPU one oneDNN RNN kernel
                   per layer). Its gate order is crvae_jax's (input, forget, cell,
                   output); it has two biases per layer where crvae_jax has one, so the
                   second (`bias_hh_l*`) is frozen at zero and not counted or trained.
  Adam(fused=True) one fused multi-tensor kernel per parameter group (CPU fused Adam
                   exists in 2.13: aten::_fused_adam_), with crvae_jax's two groups:
                   LSTM parameters at lr / T, their gradients clipped element-wise to
                   +-lstm_grad_clip (foreach), the rest at lr (the cVAE: one group).
  channels_last    convolutions run NCHW tensors in NHWC memory (like the JAX model).
  inference_mode   for the IS-NLL evaluation, BatchNorm in eval mode.
  torch.compile    variants 'compile' (mode default) and 'compile-autotune' (mode
                   max-autotune-no-cudagraphs) compile the training loss (forward; AOT
                   autograd compiles its backward) and the evaluator's encoder and
                   per-chunk decoder, both with inductor's `freezing`, which acts on the
                   no-grad (evaluation) graphs only: weights folded in as constants,
                   convolution weights prepacked for oneDNN. So a compiled Evaluator
                   keeps the weights it was compiled with (fine for timing; build a new
                   one after training). Dynamo does not trace nn.LSTM (a graph break;
                   its experimental `allow_rnn` fails in inductor's oneDNN RNN lowering
                   in 2.13), so the LSTMs run the eager oneDNN kernel between compiled
                   graphs. Compilation happens in the first train step and the first
                   evaluation batch, i.e. in the start-up figures, never in the timed
                   ones; `fresh_compile_cache` makes it a first-time compilation, as
                   JAX's is.

Timed, as benchmarks/train_throughput.py:
  train img/s      global batch 128 (config.train.batch_size), dynamic binarization, one
                   latent sample, loss = -log p(x|z) + sum_t w_t KL_t (analytic KL per
                   channel block, w_t = beta: crvae_jax.objectives.elbo), backward, Adam.
  eval samples/s   the IS-NLL estimator's decoder samples/s: each batch of test images is
                   encoded once, then `chunk` latent samples per image are decoded at a
                   time, with the log weights folded into a running log-sum-exp; samples
                   = images x K. Same images, K, chunk (= min(config chunk, K), as
                   crvae_jax.likelihood does) and batch as the JAX side.

Differences from the JAX training step, none of which should matter for speed: no lr
halving schedule (the JAX schedule is constant within any benchmark run); no non-finite
step guard, gradient/parameter norms or metrics; BatchNorm's running variance uses
torch's unbiased update (Flax: biased). Initialisers follow the Flax ones in spirit
(LeCun-normal, orthogonal recurrent kernels, forget-gate bias 1); the weights of the two
models are not the same, so whole-model numerics are not compared; the building blocks
are, with weights copied over (`equivalence_check`, tests/test_torch_reference.py).

Layouts: parameters that the Flax model keeps in NHWC order (the dense mean head's
input/output, b_enc, b_dec) are kept in that order here too.
"""

import argparse
import atexit
import functools
import math
import os
import shutil
import tempfile
import time

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from benchmarks.nll_eval import machine_line
from crvae_jax import host_memory
from crvae_jax.models.channel_recurrent import LOGVAR_LIMIT, LOGVAR_LINEAR
from experiments.configs import mnist as mnist_configs

LOG_2PI = math.log(2 * math.pi)
LATENT_HW = 4  # the encoder's output and the latent are 4x4
CHANNELS_LAST = torch.channels_last
# Variant name -> torch.compile's inductor options (None: eager): mode default and mode
# max-autotune-no-cudagraphs (torch._inductor.list_mode_options), each with `freezing`,
# which acts on inference graphs only (weights as constants, prepacked for oneDNN).
VARIANTS = {"eager": None,
            "compile": {"freezing": True},
            "compile-autotune": {"max_autotune": True, "coordinate_descent_tuning": True,
                                 "freezing": True}}


def check_variant(variant: str) -> str:
  if variant not in VARIANTS:
    raise ValueError(f"unknown torch variant {variant!r}; choose one of {list(VARIANTS)}")
  return variant


def compiled(fn, variant: str):
  """`fn` as `variant` runs it: itself (eager) or torch.compile'd with its options."""
  options = VARIANTS[check_variant(variant)]
  return fn if options is None else torch.compile(fn, options=options)


def fresh_compile_cache() -> str:
  """Points torch.compile's on-disk caches (inductor's, which hold the compiled
  graphs) at a new empty directory, removed at exit, so that start-up figures include a
  first-time compilation as JAX's do. Returns the directory."""
  cache = tempfile.mkdtemp(prefix="torch_reference_inductor_")
  atexit.register(shutil.rmtree, cache, ignore_errors=True)
  os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
  return cache


def runtime_line(variant: str = "eager") -> str:
  from crvae_jax import host_memory  # pylint: disable=g-import-not-at-top
  return (f"torch {torch.__version__} cpu, {torch.get_num_threads()} threads, "
          f"channels_last, nn.LSTM, fused Adam, {variant}, {host_memory.description()}")


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


def make_lstm(in_dim: int, hidden: int, num_layers: int = 2) -> nn.LSTM:
  """crvae_jax's StackedLSTM as one nn.LSTM over [B, T, D] (batch_first), zero initial
  state. Initialised like it (LeCun-normal input weights, orthogonal recurrent weights,
  forget-gate bias 1); `bias_hh_l*` is frozen at zero, so `bias_ih_l*` is crvae_jax's
  single bias (see `lstm_flax_params`) and the trainable parameters are the same."""
  lstm = nn.LSTM(in_dim, hidden, num_layers, batch_first=True)
  with torch.no_grad():
    for k in range(num_layers):
      w_ih = getattr(lstm, f"weight_ih_l{k}")  # [4H, D]: gates i, f, g, o
      nn.init.normal_(w_ih, std=1.0 / math.sqrt(w_ih.shape[1]))  # ~LeCun normal
      nn.init.orthogonal_(getattr(lstm, f"weight_hh_l{k}"))  # [4H, H]
      bias = getattr(lstm, f"bias_ih_l{k}")
      bias.zero_()
      bias[hidden:2 * hidden] = 1.0  # forget gate
      getattr(lstm, f"bias_hh_l{k}").zero_().requires_grad_(False)
  return lstm


def lstm_flax_params(lstm: nn.LSTM) -> dict:
  """`lstm`'s weights as crvae_jax.models.lstm.StackedLSTM params {'layer0': ...}: the
  kernels transposed ([4H, D] -> [D, 4H]; same gate order), the two biases summed."""
  out = {}
  for k in range(lstm.num_layers):
    w = lambda name: getattr(lstm, f"{name}_l{k}").detach().numpy()
    out[f"layer{k}"] = {"input_kernel": w("weight_ih").T,
                        "recurrent_kernel": w("weight_hh").T,
                        "bias": w("bias_ih") + w("bias_hh")}
  return out


def make_conv(cin, cout, kernel, stride=1, padding=0, bias=False):
  """nn.Conv2d, LeCun-normal weights (as crvae_jax's convs), zero bias."""
  conv = nn.Conv2d(cin, cout, kernel, stride, padding, bias=bias)
  nn.init.normal_(conv.weight, std=1.0 / math.sqrt(cin * kernel * kernel))  # ~LeCun
  if bias:
    nn.init.zeros_(conv.bias)
  return conv


def make_bn(channels):
  """BatchNorm2d with crvae_jax's settings (layers.batch_norm)."""
  return nn.BatchNorm2d(channels, eps=1e-5, momentum=0.1)  # = Flax momentum 0.9


def _dense_flax_params(linear: nn.Linear) -> dict:
  p = {"kernel": linear.weight.detach().numpy().T}  # [out, in] -> [in, out]
  if linear.bias is not None:
    p["bias"] = linear.bias.detach().numpy()
  return p


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
    self.convs = nn.ModuleList(make_conv(i, o, kk, s, p) for i, o, kk, s, p, _ in spec)
    self.bns = nn.ModuleList(make_bn(o) for _, o, *_ in spec)
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
    self.bn_in = make_bn(8 * c)
    self.deconvs, self.deconv_bns = nn.ModuleList(), nn.ModuleList()
    self.convs, self.conv_bns = nn.ModuleList(), nn.ModuleList()
    cin = 8 * c
    for out, pad in ((8 * c, 1), (4 * c, 1), (2 * c, 2)):  # 8x8, 16x16, 30x30
      deconv = nn.ConvTranspose2d(cin, out, 4, 2, pad, bias=False)
      nn.init.normal_(deconv.weight, std=1.0 / math.sqrt(cin * 16))
      self.deconvs.append(deconv)
      self.deconv_bns.append(make_bn(out))
      self.convs.append(make_conv(out, out, 3, 1, 1))
      self.conv_bns.append(make_bn(out))
      cin = out
    self.out = make_conv(2 * c, 1, 3, 1, 0, bias=True)  # 30x30 -> 28x28

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
    self.lstm = make_lstm(n * feature_channels // num_blocks, hidden)
    self.logvar = nn.Linear(hidden, n * latent_channels // num_blocks)

  def forward(self, features):  # [B, C, H, W] -> mean, logvar [B, L, H, W]
    b, hw, lat = features.shape[0], self.hw, self.latent_channels
    mean = self.mean(features.permute(0, 2, 3, 1).reshape(b, -1))  # NHWC flatten
    mean = (mean.reshape(b, hw, hw, lat) + self.b_enc).permute(0, 3, 1, 2)
    hs, _ = self.lstm(split_channel_blocks(features, self.num_blocks))  # [B, T, hidden]
    logvar = merge_channel_blocks(self.logvar(hs), hw, hw)
    return mean, bounded_logvar(logvar)

  def flax_params(self) -> dict:
    """The weights as crvae_jax ChannelRecurrentPosterior(mean_head='dense') params."""
    return {"mean": _dense_flax_params(self.mean),
            "b_enc": self.b_enc.detach().numpy(),
            "lstm": lstm_flax_params(self.lstm),
            "logvar": _dense_flax_params(self.logvar)}


class ChannelRecurrentGenerator(nn.Module):
  """u = Dense(LSTM over z's T channel blocks), z and u [B, L, H, W]."""

  def __init__(self, num_blocks: int, latent_channels: int, hidden: int,
               hw: int = LATENT_HW):
    super().__init__()
    self.num_blocks, self.hw = num_blocks, hw
    block = hw * hw * latent_channels // num_blocks
    self.lstm = make_lstm(block, hidden)
    self.out = nn.Linear(hidden, block)

  def forward(self, z):
    hs, _ = self.lstm(split_channel_blocks(z, self.num_blocks))  # [B, T, hidden]
    return merge_channel_blocks(self.out(hs), self.hw, self.hw)

  def flax_params(self) -> dict:
    """The weights as crvae_jax ChannelRecurrentGenerator params."""
    return {"lstm": lstm_flax_params(self.lstm), "out": _dense_flax_params(self.out)}


class LatentGridVAE(nn.Module):
  """What the ported variants share: a latent [B, L, 4, 4] with a Gaussian posterior,
  the conv decoder behind `decode`, and the one-sample training forward."""

  latent_channels: int
  num_blocks: int

  @property
  def latent_shape(self):
    return (self.latent_channels, LATENT_HW, LATENT_HW)

  def forward(self, x, eps=None):
    """One latent sample per image (eps [B, L, 4, 4]; None: drawn here): logits
    [B, 1, 28, 28] and the analytic KL per channel block [B, T]."""
    mean, logvar = self.encode(x)
    if eps is None:
      eps = torch.randn_like(mean)
    z = mean + torch.exp(0.5 * logvar) * eps
    kl = 0.5 * (torch.exp(logvar) + mean.square() - 1.0 - logvar)
    return self.decode(z), split_channel_blocks(kl, self.num_blocks).sum(-1)


class CrVAE(LatentGridVAE):
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
    self.dec_in = make_conv(latent_channels, 8 * width, 3, 1, 1)
    self.decoder = Decoder(width)

  def encode(self, x):
    """x [B, 1, 28, 28] in {0, 1} -> mean, logvar [B, L, 4, 4]."""
    return self.posterior(self.encoder(x))

  def decode(self, z):
    """z [N, L, 4, 4] -> Bernoulli logits [N, 1, 28, 28]."""
    u = self.generator(z) + self.b_dec.permute(2, 0, 1)  # u + b_dec
    return self.decoder(self.dec_in(u))


class ConvVAE(LatentGridVAE):
  """MnistVAE(variant='cvae'): the same encoder (last strided conv 5x5) and decoder with
  3x3 convs (with bias) for the posterior's mean and log-variance and a 3x3 conv into
  the decoder; no LSTMs (the crVAE without its channel recurrence)."""

  def __init__(self, width: int = 32, latent_channels: int = 64, num_blocks: int = 8):
    super().__init__()
    self.num_blocks, self.latent_channels = num_blocks, latent_channels
    self.encoder = Encoder(width, last_kernel=5)
    self.enc_mean = make_conv(8 * width, latent_channels, 3, 1, 1, bias=True)
    self.enc_logvar = make_conv(8 * width, latent_channels, 3, 1, 1, bias=True)
    self.dec_in = make_conv(latent_channels, 8 * width, 3, 1, 1)
    self.decoder = Decoder(width)

  def encode(self, x):
    """x [B, 1, 28, 28] in {0, 1} -> mean, logvar [B, L, 4, 4]."""
    f = self.encoder(x)
    return self.enc_mean(f), bounded_logvar(self.enc_logvar(f))

  def decode(self, z):
    """z [N, L, 4, 4] -> Bernoulli logits [N, 1, 28, 28]."""
    return self.decoder(self.dec_in(z))


PORTED_VARIANTS = ("crvae", "cvae")


def build_model(width: int = 32, lstm_hidden: int = 512, latent_channels: int = 64,
                num_blocks: int = 8, channels_last: bool = True,
                variant: str = "crvae") -> LatentGridVAE:
  """The `variant` model (random init), in channels_last memory format by default."""
  if variant not in PORTED_VARIANTS:
    raise ValueError(f"the torch reference ports variants {PORTED_VARIANTS}, got "
                     f"{variant!r}")
  model = (CrVAE(width, lstm_hidden, latent_channels, num_blocks) if variant == "crvae"
           else ConvVAE(width, latent_channels, num_blocks))
  return model.to(memory_format=CHANNELS_LAST) if channels_last else model


def ports_config(config) -> bool:
  """Whether the port computes `config`'s train step: a ported model trained on the
  one-sample ELBO (rows crvae, crvae_t4, crvae_t16 and cvae)."""
  m, o = config.model, config.objective
  return m.variant in PORTED_VARIANTS and o.kind == "elbo" and o.num_samples == 1


def model_from_config(config, channels_last: bool = True) -> LatentGridVAE:
  if not ports_config(config):
    raise ValueError(f"the torch reference ports the one-sample ELBO step of variants "
                     f"{PORTED_VARIANTS}, got config.model.variant="
                     f"{config.model.variant!r}, objective.kind={config.objective.kind!r}"
                     f", objective.num_samples={config.objective.num_samples}")
  m = config.model
  return build_model(m.width, m.lstm_hidden, m.latent_channels, m.num_blocks,
                     channels_last, m.variant)


def num_params(model: nn.Module) -> int:
  """Trainable parameters (nn.LSTM's frozen second biases are not counted)."""
  return sum(p.numel() for p in model.parameters() if p.requires_grad)


def flax_num_params(config) -> int:
  """Parameter count of the Flax model for `config` (shapes only: nothing runs)."""
  import jax
  from crvae_jax.families import mnist as mnist_family
  model = mnist_family.build_model(config)
  variables = jax.eval_shape(lambda: mnist_family.init_variables(model, 0))
  return sum(math.prod(x.shape) for x in jax.tree.leaves(variables["params"]))


# --------------------------------------------------------------------------- training

def bernoulli_log_likelihood(logits, x):
  """log Bern(x; sigmoid(logits)) summed over all but the leading axis."""
  return (x * logits - F.softplus(logits)).reshape(logits.shape[0], -1).sum(-1)


def block_weights(config) -> torch.Tensor:
  """crvae_jax.objectives.block_weights for config.objective: [T]."""
  t, beta = config.model.num_blocks, config.objective.beta
  first = config.objective.get("beta_first_blocks")
  first = beta if first is None else first
  return torch.tensor([first] * min(3, t) + [beta] * max(0, t - 3))


def elbo_loss(model: LatentGridVAE, x, weights):
  """-(beta-weighted ELBO) averaged over the batch, one latent sample per image."""
  logits, kl_blocks = model(x)
  recon = bernoulli_log_likelihood(logits, x)
  return -(recon - (kl_blocks * weights).sum(-1)).mean()


def make_optimizer(model: nn.Module, config):
  """Fused Adam with the JAX groups: LSTM parameters at lr / lstm_lr_divisor (their
  gradients clipped element-wise by `Trainer.step`), the rest at lr. No lr schedule.
  Returns (optimizer, LSTM parameters)."""
  o = config.optim
  params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
  lstm = [p for n, p in params if ".lstm." in n]
  other = [p for n, p in params if ".lstm." not in n]
  groups = [{"params": other, "lr": o.learning_rate}]
  if lstm:  # (the cVAE has none)
    groups.append({"params": lstm, "lr": o.learning_rate / o.lstm_lr_divisor})
  return torch.optim.Adam(groups, betas=(o.b1, o.b2), eps=o.eps, fused=True), lstm


def _train_batches(batch: int):
  """4 batches of random uint8 intensities / 255 [B, 1, 28, 28], channels_last."""
  images = np.random.default_rng(0).integers(0, 256, (batch * 4, 1, 28, 28),
                                             dtype=np.uint8)
  return [torch.from_numpy(images[i::4].astype(np.float32) / 255.0)
          .contiguous(memory_format=CHANNELS_LAST) for i in range(4)]


class Trainer:
  """The train step of `model` at config.train.batch_size with its optimizer kept
  across calls (as JAX's), run as `variant`; the first step (with any compilation) runs
  on construction (`startup_s`)."""

  def __init__(self, model: LatentGridVAE, config, variant: str = "eager"):
    t0 = time.perf_counter()
    self.model, self.batch = model, config.train.batch_size
    self.clip = config.optim.lstm_grad_clip
    self.batches = _train_batches(self.batch)
    self.opt, self.lstm_params = make_optimizer(model, config)
    weights = block_weights(config)
    self.loss_fn = compiled(functools.partial(elbo_loss, model, weights=weights),
                            variant)
    model.train()
    self._steps(1)
    self.startup_s = time.perf_counter() - t0

  def step(self, images_float):
    """One update on images [B, 1, 28, 28] of intensities in [0, 1] (binarized here)."""
    x = torch.bernoulli(images_float)
    self.opt.zero_grad(set_to_none=True)
    loss = self.loss_fn(x)
    loss.backward()
    if self.lstm_params:  # (foreach fails on an empty list: the cVAE has no LSTMs)
      torch.nn.utils.clip_grad_value_(self.lstm_params, self.clip, foreach=True)
    self.opt.step()
    return loss.detach()

  def _steps(self, n: int, first: int = 0) -> float:
    if n < 1:
      raise ValueError(f"steps must be >= 1, got {n}")
    for i in range(n):
      loss = self.step(self.batches[(first + i) % 4])
    return float(loss)

  def run(self, steps: int, warmup: int = 1) -> float:
    """Train images/s over `steps` steps after `warmup` untimed ones."""
    self.model.train()
    if warmup:
      self._steps(warmup)
    t = time.perf_counter()
    loss = self._steps(steps, first=1)
    per_s = steps * self.batch / (time.perf_counter() - t)
    if not math.isfinite(loss):
      raise FloatingPointError(f"non-finite training loss {loss}")
    return per_s


# --------------------------------------------------------------------------- IS-NLL

def chunk_log_weights(model: LatentGridVAE, x_flat, mean, logvar, eps):
  """log w = log p(x|z) + log p(z) - log q(z|x) [b, chunk] for z = mean + std * eps;
  x_flat [b, 1, 784], mean / logvar [b, 1, L, 4, 4], eps [b, chunk, L, 4, 4]."""
  b, chunk = eps.shape[:2]
  z = mean + torch.exp(0.5 * logvar) * eps  # [b, chunk, L, 4, 4]
  log_q = -0.5 * (LOG_2PI + logvar + eps.square())  # (z - mean)^2 / var = eps^2
  log_p = -0.5 * (LOG_2PI + z.square())
  kl = (log_q - log_p).reshape(b, chunk, -1).sum(-1)  # [b, chunk]
  z = z.reshape((b * chunk,) + tuple(eps.shape[2:])).contiguous(
      memory_format=CHANNELS_LAST)
  logits = model.decode(z).reshape(b, chunk, -1)  # [b, chunk, 784]
  return (x_flat * logits - F.softplus(logits)).sum(-1) - kl


class Evaluator:
  """The IS-NLL estimator of `model` (crvae_jax.likelihood's algorithm) run as
  `variant`, under torch.inference_mode with BatchNorm in eval mode. Compiled variants
  freeze the weights at their first call (see the module doc)."""

  def __init__(self, model: LatentGridVAE, variant: str = "eager"):
    self.model = model
    self.encode = compiled(model.encode, variant)
    self.log_weights = compiled(functools.partial(chunk_log_weights, model), variant)

  @torch.inference_mode()
  def log_px(self, x, num_samples: int, chunk: int):
    """Importance-sampled log p(x) [b] of x [b, 1, 28, 28] with K = num_samples,
    decoding `chunk` samples per image at a time (ceil(K / chunk) chunks of the full
    chunk, samples with index >= K masked out of the running log-sum-exp)."""
    self.model.eval()
    b = x.shape[0]
    mean, logvar = self.encode(x)  # [b, L, 4, 4]
    mean, logvar = mean.unsqueeze(1), logvar.unsqueeze(1)  # [b, 1, L, 4, 4]
    x_flat = x.reshape(b, 1, -1)  # [b, 1, 784]
    m = torch.full((b,), -math.inf)
    s = torch.zeros(b)
    for start in range(0, num_samples, chunk):
      eps = torch.randn((b, chunk) + self.model.latent_shape)
      log_w = self.log_weights(x_flat, mean, logvar, eps)  # [b, chunk]
      valid = torch.arange(start, start + chunk) < num_samples
      log_w = torch.where(valid[None], log_w, -math.inf)
      new_m = torch.maximum(m, log_w.max(-1).values)
      s = s * torch.exp(m - new_m) + torch.exp(log_w - new_m[:, None]).sum(-1)
      m = new_m
    return m + torch.log(s) - math.log(num_samples)

  def prepare(self, batch: int, num_samples: int, chunk: int) -> float:
    """Runs (and so compiles, if it does) the estimator once at this batch, K and chunk;
    returns the seconds that took."""
    t = time.perf_counter()
    images = torch.zeros((batch, 1, 28, 28)).contiguous(memory_format=CHANNELS_LAST)
    self.log_px(images, num_samples, min(chunk, num_samples))
    return time.perf_counter() - t

  def samples_per_s(self, num_images: int, num_samples: int, chunk: int,
                    batch: int) -> float:
    """Decoder samples/s over num_images random binary images (after one untimed
    batch), chunk capped at K."""
    chunk = min(chunk, num_samples)
    rng = np.random.default_rng(1)
    images = torch.from_numpy(
        (rng.random((num_images, 1, 28, 28)) < 0.15).astype(np.float32))
    images = images.contiguous(memory_format=CHANNELS_LAST)
    self.log_px(images[:batch], num_samples, chunk)  # warm-up (compiles once)
    t = time.perf_counter()
    out = [self.log_px(images[lo:lo + batch], num_samples, chunk)
           for lo in range(0, num_images, batch)]
    per_s = num_images * num_samples / (time.perf_counter() - t)
    if not torch.isfinite(torch.cat(out)).all():
      raise FloatingPointError("non-finite log p(x) estimate")
    return per_s


def matmul_gflops(n: int = 4096, repeats: int = 5) -> float:
  """This process's torch fp32 matmul rate (n^2 @ n^2, best of `repeats`), GFLOP/s."""
  a = torch.ones(n, n)
  a @ a  # pylint: disable=pointless-statement
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    a @ a  # pylint: disable=pointless-statement
    best = min(best, time.perf_counter() - t)
  return 2 * n ** 3 / best / 1e9


# --------------------------------------------------------------------------- checks

def check_blocks_against_jax(seed: int = 0) -> None:
  """The building blocks whose layout or semantics could silently differ, each run
  with the same inputs and weights in both frameworks (AssertionError if not equal):
  the channel-block split and merge, bounded_logvar, nn.LSTM vs crvae_jax's
  StackedLSTM, the whole channel-recurrent posterior and generator (weights copied
  over with `flax_params`, all biases random so that gate order and bias layout
  matter), and a 4x4 stride-2 transposed convolution (both paddings of the decoder)."""
  import jax.numpy as jnp
  from crvae_jax.models import channel_recurrent as jcr
  from crvae_jax.models import layers as jlayers
  from crvae_jax.models import lstm as jlstm

  rng = np.random.default_rng(seed)
  torch.manual_seed(seed)
  normal = lambda *shape: rng.standard_normal(shape).astype(np.float32)
  close = functools.partial(np.testing.assert_allclose, rtol=2e-5, atol=2e-5)

  # Channel blocks: torch NCHW split/merge == JAX NHWC split/merge.
  a = normal(2, 4, 4, 16)
  seq = split_channel_blocks(torch.from_numpy(a).permute(0, 3, 1, 2), 4)
  np.testing.assert_array_equal(seq.numpy(), np.asarray(jcr.split_channel_blocks(a, 4)))
  np.testing.assert_array_equal(merge_channel_blocks(seq, 4, 4).permute(0, 2, 3, 1)
                                .numpy(), a)

  raw = np.linspace(-40, 30, 141, dtype=np.float32)
  close(bounded_logvar(torch.from_numpy(raw)).numpy(), np.asarray(jcr.bounded_logvar(raw)),
        rtol=1e-6, atol=1e-6)

  def randomize(module):  # every parameter (frozen biases too) away from its init
    with torch.no_grad():
      for p in module.parameters():
        p.copy_(0.3 * torch.randn_like(p))
    return module

  # nn.LSTM (2 layers, one call) == StackedLSTM with the same weights.
  lstm = randomize(make_lstm(12, 5))
  xs = normal(3, 4, 12)
  want = jlstm.StackedLSTM(5).apply({"params": lstm_flax_params(lstm)}, xs)
  with torch.no_grad():
    got, _ = lstm(torch.from_numpy(xs))
  close(got.numpy(), np.asarray(want))

  # The channel-recurrent blocks: features [B, H, W, C=16], T=4, L=8, hidden 6.
  features = normal(3, 4, 4, 16)
  features_t = torch.from_numpy(features).permute(0, 3, 1, 2).contiguous(
      memory_format=CHANNELS_LAST)
  nhwc = lambda t: t.permute(0, 2, 3, 1).numpy()
  post = randomize(ChannelRecurrentPosterior(16, 4, 8, 6))
  want = jcr.ChannelRecurrentPosterior(num_blocks=4, latent_channels=8, hidden=6,
                                       mean_head="dense").apply(
      {"params": post.flax_params()}, features)
  with torch.no_grad():
    mean, logvar = post(features_t)
  close(nhwc(mean), np.asarray(want.mean))
  close(nhwc(logvar), np.asarray(want.logvar))
  gen = randomize(ChannelRecurrentGenerator(4, 16, 6))
  want = jcr.ChannelRecurrentGenerator(num_blocks=4, hidden=6).apply(
      {"params": gen.flax_params()}, features)
  with torch.no_grad():
    got = gen(features_t)
  close(nhwc(got), np.asarray(want))

  # Transposed convolution (torch padding semantics), torch weight [Cin, Cout, K, K]
  # = Flax kernel [K, K, Cin, Cout] transposed; the padding-2 layer (16 -> 30) too.
  for pad, size in ((1, 4), (2, 16)):
    deconv = nn.ConvTranspose2d(6, 5, 4, 2, pad, bias=False)
    h = normal(2, size, size, 6)
    kernel = deconv.weight.detach().numpy().transpose(2, 3, 0, 1)
    want = jlayers.conv_transpose_xla(jnp.asarray(h), jnp.asarray(kernel), 2, pad)
    with torch.no_grad():
      got = deconv(torch.from_numpy(h).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    close(got.numpy(), np.asarray(want), rtol=1e-4, atol=1e-4)


def check_model_against_flax(config, batch: int = 3) -> None:
  """The trainable parameter count equals the Flax model's, and the posterior, logits,
  KL blocks and log p(x) have the Flax model's shapes (torch NCHW [B, 1, 28, 28] = Flax
  [B, 28, 28, 1]), finite, in train and eval mode. Shapes only on the Flax side."""
  import jax
  import jax.numpy as jnp
  from crvae_jax.families import mnist as mnist_family

  torch.manual_seed(0)
  model = model_from_config(config)
  n_torch, n_flax = num_params(model), flax_num_params(config)
  assert n_torch == n_flax, f"parameter counts differ: torch {n_torch}, flax {n_flax}"
  flax_model = mnist_family.build_model(config)
  variables = jax.eval_shape(lambda: mnist_family.init_variables(flax_model, 0))
  x_np = (np.random.default_rng(0).random((batch, 28, 28, 1)) < 0.3).astype(np.float32)
  eps1 = jax.ShapeDtypeStruct((batch, 1) + flax_model.latent_shape, jnp.float32)
  flax_out = jax.eval_shape(lambda v, x, e: flax_model.apply(v, x, e), variables,
                            jax.ShapeDtypeStruct(x_np.shape, jnp.float32), eps1)
  x = torch.from_numpy(x_np).permute(0, 3, 1, 2).contiguous(memory_format=CHANNELS_LAST)
  nhwc = lambda t: tuple(t.permute(0, 2, 3, 1).shape)
  for train in (True, False):
    model.train(train)
    with torch.no_grad():
      mean, logvar = model.encode(x)
      logits, kl = model(x, torch.randn_like(mean))
    assert nhwc(mean) == nhwc(logvar) == (batch,) + flax_model.latent_shape, mean.shape
    assert nhwc(logits) == flax_out.logits.shape[:1] + flax_out.logits.shape[2:], (
        logits.shape, flax_out.logits.shape)
    assert tuple(kl.shape) == flax_out.kl_blocks_analytic.shape, kl.shape
    assert torch.isfinite(logits).all() and torch.isfinite(kl).all()
  log_px = Evaluator(model).log_px(x, 4, 3)
  assert tuple(log_px.shape) == (batch,) and torch.isfinite(log_px).all(), log_px


def equivalence_check(verbose: bool = True) -> None:
  """`check_model_against_flax` at CPU scale, then `check_blocks_against_jax`."""
  check_model_against_flax(mnist_configs.get_config("crvae,cpu"))
  check_blocks_against_jax()
  if verbose:
    print("equivalence_check: ok (parameter count and shapes = Flax; channel blocks, "
          "nn.LSTM, channel-recurrent posterior and generator, deconv match JAX)")


# --------------------------------------------------------------------------- CLI

def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--scales", default="cpu,paper")
  p.add_argument("--row", default="crvae")
  p.add_argument("--variants", default="eager,compile",
                 help=f"comma-separated, of {list(VARIANTS)}")
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--warmup", type=int, default=1, help="untimed train steps (>= 1) "
                 "after the first (start-up) step")
  p.add_argument("--eval_images", type=int, default=200)
  p.add_argument("--eval_samples", type=int, default=20)
  p.add_argument("--check", action=argparse.BooleanOptionalAction, default=True,
                 help="run equivalence_check() first")
  args = p.parse_args()
  variants = [check_variant(v) for v in args.variants.split(",")]
  fresh_compile_cache()
  torch.set_num_threads(os.cpu_count())
  if args.check:
    equivalence_check()
  print(f"# {machine_line(runtime_line(args.variants))}")
  print("| row | scale | variant | params | start-up s | train img/s | "
        "eval K, chunk x batch | eval set-up s | eval samples/s |")
  print("|---" * 9 + "|")
  for scale in args.scales.split(","):
    config = mnist_configs.config_at_scale(args.row, scale)
    for variant in variants:
      torch.manual_seed(0)
      torch.compiler.reset()
      model = model_from_config(config)
      n = num_params(model)
      trainer = Trainer(model, config, variant)
      train_ips = trainer.run(args.steps, max(1, args.warmup))
      chunk = min(config.eval.chunk_size, args.eval_samples)
      evaluator = Evaluator(model, variant)
      eval_setup = evaluator.prepare(config.eval.batch_size, args.eval_samples, chunk)
      eval_sps = evaluator.samples_per_s(args.eval_images, args.eval_samples, chunk,
                                         config.eval.batch_size)
      print(f"| {args.row} | {scale} | {variant} | {n / 1e6:.2f} M ({n:,}) | "
            f"{trainer.startup_s:.1f} | {train_ips:.1f} | "
            f"{args.eval_samples}, {chunk} x {config.eval.batch_size} | "
            f"{eval_setup:.1f} | {eval_sps:.0f} |", flush=True)


if __name__ == "__main__":
  host_memory.reexec_with_hugepages()
  main()
