r"""Per-layer forward and backward time of a model's layers, crvae_jax vs PyTorch.

crvae_jax's kernels against PyTorch channels_last (issue 7), one layer call at a time:

  pip install -r requirements-torch.txt
  python -m benchmarks.layers_vs_torch --batch=128 --repeats=5
  python -m benchmarks.layers_vs_torch --scale=cpu --batch=1000 --repeats=5
  python -m benchmarks.layers_vs_torch --model=gan --scale=cpu --repeats=5
  python -m benchmarks.layers_vs_torch --model=gan --scale=paper --repeats=5

--model=mnist (default): the MNIST crVAE's layers (--scale paper, the default for mnist:
width 32; cpu: width 8) at --batch rows: the encoder's and the decoder's convolutions
(encoder: conv; decoder: 4x4/2 transposed conv 'deconv' and conv) with the kernels of
each conv_impl of --impls (default cpu and xla; onednn: oneDNN's), each compiled with its
`compiled.compiler_options`, as in the model; then, as
the model's own modules, its two stacked LSTMs (vs one nn.LSTM) and its training-mode
BatchNorms (vs F.batch_norm). Not timed: the 3x3 conv into the decoder (`dec_in`, at
4x4) and the Dense heads. The last row sums the forward columns of the decoder's rows
and the generator LSTM, most of what an IS evaluation runs once per importance sample
(its BatchNorms run with running statistics there); at a batch of chunk x images rows
(e.g. --scale=cpu --batch=1000) it is the evaluation's size.

--model=gan: the Stage1 networks of `gan_throughput.config_at_scale(--row, --scale)` (cpu:
width 8, batch 32; paper: width 32, batch 64), their layers found by tracing the forward
pass of the train step (`train.stage1_step`: the generator on the batch, the
discriminator on [real | generated] with the trunk's real/generated split, the MI head on
the generated rows) and run as the model runs them: the crvae_jax modules with the
config's conv_impl (--conv_impl overrides it) and its compiler options. Rows: every conv
and transposed conv, the BatchNorms at 64x64, `max_pool2` after each trunk conv (vs
F.max_pool2d), minibatch discrimination (vs the PyTorch port's torch.cdist form) and the
stacked LSTMs (vs nn.LSTM). 'calls' is how often the step's forward runs the row; the sum
row weighs each row by it. The backward differentiates w.r.t. the input and the
parameters, as the MNIST rows do (the step needs no input gradient for the first
encoder conv or the real images' trunk).

Each row is timed as the best of --repeats after a warm-up: forward alone, and the
backward pass as (forward + backward) - forward. JAX and PyTorch run in this one process,
one after the other, with a pause between them (PyTorch's OpenMP threads spin for a while
after work). Where the JAX row is slower than torch, the model's step is too: the sum
over rows shows how much of the train-step gap these layers explain.
"""

import argparse
import os
import time
from typing import Any, NamedTuple

import jax
import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from benchmarks import gan_throughput
from crvae_jax import host_memory
from crvae_jax import compiled
from crvae_jax.models import fast_conv, layers, lstm, rgb

def mnist_layers(width: int) -> tuple:
  """The MNIST crVAE's convolutions at base width c (paper 32, CPU scale 8), as
  (name, kind, Cin, Cout, H=W of the input, kernel, stride, padding)."""
  c = width
  spec = (
      ("enc", "conv", 1, c, 28, 5, 2, 3),
      ("enc", "conv", 2 * c, 2 * c, 15, 3, 1, 1),
      ("enc", "conv", 2 * c, 2 * c, 15, 3, 2, 1),
      ("enc", "conv", 4 * c, 4 * c, 8, 3, 1, 1),
      ("enc", "conv", 4 * c, 4 * c, 8, 3, 2, 1),
      ("enc", "conv", 8 * c, 8 * c, 4, 3, 1, 1),
      ("dec", "deconv", 8 * c, 8 * c, 4, 4, 2, 1),
      ("dec", "conv", 8 * c, 8 * c, 8, 3, 1, 1),
      ("dec", "deconv", 8 * c, 4 * c, 8, 4, 2, 1),
      ("dec", "conv", 4 * c, 4 * c, 16, 3, 1, 1),
      ("dec", "deconv", 4 * c, 2 * c, 16, 4, 2, 2),
      ("dec", "conv", 2 * c, 2 * c, 30, 3, 1, 1),
      ("dec", "conv", 2 * c, 1, 30, 3, 1, 0),
  )
  rows = []
  for part, kind, cin, cout, hw, k, s, pad in spec:
    op = "deconv" if kind == "deconv" else f"conv{k}x{k}" + (f"/{s}" if s > 1 else "")
    rows.append((f"{part} {op} {cin}->{cout} @{hw}", kind, cin, cout, hw, k, s, pad))
  return tuple(rows)


def out_size(kind: str, hw: int, k: int, s: int, pad: int) -> int:
  """Output H=W of a 'conv' or a Torch-semantics 'deconv' on an HxW input."""
  return (fast_conv.conv_out_size(hw, k, s, pad) if kind == "conv"
          else (hw - 1) * s + k - 2 * pad)


def mnist_lstm_inputs(model) -> dict:
  """The crVAE's two stacked LSTMs -> their input width per step: a channel block of the
  encoder's [4, 4, 8c] features (posterior) or of the [4, 4, L] latent (generator)."""
  t = model.num_blocks
  return {"posterior": 16 * 8 * model.width // t,
          "generator": 16 * model.latent_channels // t}


def mnist_batch_norms(width: int) -> list:
  """(part, H=W, channels) of each BatchNorm of the crVAE's encoder and decoder: one
  after every convolution but the decoder's last, and one on the decoder's input."""
  norms = [("dec", 4, 8 * width)]  # the decoder's input features
  for name, kind, _, cout, hw, k, s, pad in mnist_layers(width)[:-1]:
    norms.append((name.split()[0], out_size(kind, hw, k, s, pad), cout))
  return norms


def best_ms(fn, repeats: int) -> float:
  fn()
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t)
  return best * 1e3


def conv_fn(impl: str, kind: str, s: int, p: int):
  """(x, kernel) -> the layer's output with conv_impl `impl`'s kernels, as layers.Conv
  and layers.ConvTranspose pick them."""
  with_impl = layers.conv_with_impl if kind == "conv" else layers.conv_transpose_with_impl
  return lambda x, w: with_impl(impl, x, w, s, p)


def jax_times(impl, kind, x, w, s, p, dy, repeats):
  f = conv_fn(impl, kind, s, p)
  opts = compiled.compiler_options(impl)  # as the model's programs compile them
  fwd = jax.jit(f, compiler_options=opts)
  both = jax.jit(forward_and_backward(f), compiler_options=opts)
  x, w, dy = map(jnp.asarray, (x, w, dy))
  a = best_ms(lambda: fwd(x, w).block_until_ready(), repeats)
  b = best_ms(lambda: jax.block_until_ready(both(x, w, dy)), repeats)
  return a, b


def forward_and_backward(f):
  """(x, p, dy) -> (f(x, p), its vjp at dy): the forward pass and the backward pass, as
  a train step runs them. The forward output is returned so that XLA keeps the forward:
  a convolution's backward needs only x, p and dy, so a function returning the vjp
  alone compiles without the forward convolution (the tables of 2026-12-05 00:35 and
  earlier timed JAX's backward that way, under by one forward)."""
  def both(x, p, dy):
    out, pullback = jax.vjp(f, x, p)
    return out, pullback(dy)
  return both


def torch_times(torch, kind, x, w, s, p, dy, repeats):
  """(forward ms, forward + backward ms) in PyTorch."""
  import torch.nn.functional as F
  cl = torch.channels_last
  tx = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=cl).requires_grad_()
  perm = (3, 2, 0, 1) if kind == "conv" else (2, 3, 0, 1)  # OIHW / IOHW
  tw = torch.from_numpy(w).permute(*perm).contiguous(memory_format=cl).requires_grad_()
  tdy = torch.from_numpy(dy).permute(0, 3, 1, 2).contiguous(memory_format=cl)
  f = ((lambda: F.conv2d(tx, tw, stride=s, padding=p)) if kind == "conv" else
       (lambda: F.conv_transpose2d(tx, tw, stride=s, padding=p)))
  with torch.no_grad():
    a = best_ms(f, repeats)
  b = best_ms(lambda: torch.autograd.grad(f(), (tx, tw), tdy), repeats)
  return a, b


def mnist_table(torch, batch: int, repeats: int, model, impls=("cpu", "xla")) -> None:
  """Prints the rows of the crVAE of `model` (a config's model block) at `batch`: its
  convolutions (the kernels of each conv_impl in `impls` vs torch), its two stacked
  LSTMs and its BatchNorms, and the forward sum of its per-sample part. The ratio column
  is torch's fwd+bwd time over the first impl's; the other rows (LSTMs, BatchNorms) run
  the first impl's compiler options."""
  first, n = impls[0], len(impls)
  cols = [f"fwd {i}" for i in impls] + ["fwd torch"] + [f"bwd {i}" for i in impls] + [
      "bwd torch"]
  print("| layer | " + " | ".join(cols) + f" | fwd+bwd torch / {first} |")
  print("|---" * (len(cols) + 2) + "|")
  rng = np.random.default_rng(0)
  total = np.zeros(2 * n + 2)
  width = model.width
  per_sample = np.zeros(2)  # forward ms, jax cpu and torch: rows run once per sample
  is_per_sample = lambda name: name.startswith(("dec ", "generator "))
  for name, kind, cin, cout, hw, k, s, pad in mnist_layers(width):
    x = rng.standard_normal((batch, hw, hw, cin), np.float32)
    w = (rng.standard_normal((k, k, cin, cout)) * 0.05).astype(np.float32)
    out = out_size(kind, hw, k, s, pad)
    dy = rng.standard_normal((batch, out, out, cout), np.float32)
    fb = [jax_times(impl, kind, x, w, s, pad, dy, repeats) for impl in impls]
    time.sleep(0.5)
    tf, tb = torch_times(torch, kind, x, w, s, pad, dy, repeats)
    time.sleep(0.5)
    row = np.array([f for f, _ in fb] + [tf] + [b - f for f, b in fb] + [tb - tf])
    total += row
    per_sample += [fb[0][0], tf] if is_per_sample(name) else 0.0
    print(f"| {name} | " + " | ".join(f"{v:.1f}" for v in row) +
          f" | {tb / fb[0][1]:.2f} |", flush=True)
  ratio = lambda t: (t[n] + t[2 * n + 1]) / (t[0] + t[n + 1])
  print("| **sum** | " + " | ".join(f"{v:.0f}" for v in total) + f" | {ratio(total):.2f} |")
  # The model's other layers, timed as its own modules: the two stacked LSTMs over the T
  # channel blocks (one nn.LSTM per layer in torch) and the training-mode BatchNorm after
  # each convolution (and on the decoder's input). 'xla' is the same module for these, so
  # those columns stay empty.
  t, hidden = model.num_blocks, model.lstm_hidden
  rows = [LayerCall(f"{name} lstm T={t} {dim}->{hidden}", "lstm", lstm.StackedLSTM(hidden),
                    (batch, t, dim), (batch, t, hidden), 1)
          for name, dim in mnist_lstm_inputs(model).items()]
  bn = layers.batch_norm(True, None)
  rows += [LayerCall(f"{part} bn {c} @{hw}", "bn", bn, (batch, hw, hw, c),
                     (batch, hw, hw, c), 1) for part, hw, c in mnist_batch_norms(width)]
  other = [i for i in range(1, n)] + [n + 1 + i for i in range(1, n)]  # '-' columns
  for kind, title in (("lstm", "the LSTMs"), ("bn", "the BatchNorms")):
    for layer in (r for r in rows if r.kind == kind):
      cf, cb, tf, tb = layer_call_times(torch, layer, rng, repeats, first)
      row = np.full(2 * n + 2, np.nan)
      row[[0, n, n + 1, 2 * n + 1]] = cf, tf, cb - cf, tb - tf
      total += np.nan_to_num(row)
      per_sample += [cf, tf] if is_per_sample(layer.name) else 0.0
      print(f"| {layer.name} | " + " | ".join("-" if np.isnan(v) else f"{v:.1f}"
                                                for v in row) + f" | {tb / cb:.2f} |",
            flush=True)
    print(f"| **sum with {title}** | " + " | ".join(
        "-" if i in other else f"{v:.0f}" for i, v in enumerate(total)) +
          f" | {ratio(total):.2f} |")
  print(f"| **forward of the per-sample part (dec + generator rows)** | {per_sample[0]:.0f} "
        + "| - " * (n - 1) + f"| {per_sample[1]:.0f} " + "| " * (n + 1) +
        f"| {per_sample[1] / per_sample[0]:.2f} (fwd) |")


# --- Stage1 GAN (--model=gan) ---------------------------------------------------------


class LayerCall(NamedTuple):
  """One row timed as a crvae_jax module: a layer call of a step's forward pass (every
  row of the GAN table; the LSTM rows of the MNIST table)."""
  name: str  # module path and what it computes
  kind: str  # 'conv', 'deconv', 'bn', 'max_pool2', 'minibatch', 'lstm'
  module: Any  # the unbound crvae_jax module (None for max_pool2)
  in_shape: tuple
  out_shape: tuple
  calls: int  # how often the step's forward runs it at this shape


_KINDS = ((layers.Conv, "conv"), (layers.ConvTranspose, "deconv"), (nn.BatchNorm, "bn"),
          (layers.BatchNorm, "bn"),  # (model.fused_backward's)
          (rgb.MinibatchDiscrimination, "minibatch"), (lstm.StackedLSTM, "lstm"))


def _describe(kind: str, module, in_shape: tuple, out_shape: tuple) -> str:
  if kind in ("conv", "deconv"):
    k, s = module.kernel_size, module.stride
    return (f"{kind}{k}x{k}{f'/{s}' if s > 1 else ''} {in_shape[-1]}->{out_shape[-1]} "
            f"@{in_shape[1]}")
  if kind in ("bn", "max_pool2"):
    return f"{kind} {in_shape[-1]} @{in_shape[1]}"
  if kind == "minibatch":
    return f"minibatch {in_shape[-1]}->{module.num_kernels}x{module.kernel_dim}"
  return f"lstm T={in_shape[1]} {in_shape[2]}->{module.hidden}"  # lstm


def gan_layers(config) -> list:
  """The rows of `config`'s Stage1 step (see the module doc), in call order, at the
  per-device batch config.train.batch_size. Shapes come from tracing the modules of
  `families.stage1.build(config)` with `jax.eval_shape`; nothing is computed."""
  from crvae_jax.families import stage1  # pylint: disable=g-import-not-at-top
  parts = stage1.build(config, axis_name=None)
  b = config.train.batch_size
  if b % 2:
    raise ValueError(f"train.batch_size must be even (the step's 50/25/25 split), got {b}")
  calls = {}  # (path, in_shape) -> LayerCall
  network = [""]  # the traced network's name, prefixed to its module paths

  def record(name, kind, module, in_shape, out_shape):
    key = (name, in_shape)
    row = calls.get(key)
    calls[key] = row._replace(calls=row.calls + 1) if row else LayerCall(
        f"{name} {_describe(kind, module, in_shape, out_shape)}", kind,
        module, in_shape, out_shape, 1)

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    kind = next((k for t, k in _KINDS if isinstance(context.module, t)), None)
    if context.method_name != "__call__" or kind is None:
      return out
    in_shape, out_shape = tuple(args[0].shape), tuple(out.shape)
    if kind == "bn" and (len(in_shape) != 4 or in_shape[1] != rgb.IMAGE_SIZE):
      return out  # only the BatchNorms at 64x64
    name = "/".join((network[0], *context.module.scope.path))
    record(name, kind, context.module.clone(parent=None), in_shape, out_shape)
    if name.startswith("disc/trunk"):  # each trunk conv is followed by max_pool2
      record(f"{name}+pool", "max_pool2", None, out_shape,
             (out_shape[0], out_shape[1] // 2, out_shape[2] // 2, out_shape[3]))
    return out

  key = jax.random.key(0)
  model, disc, mi_head = parts.model, parts.disc, parts.mi_head
  images = jnp.zeros((b, rgb.IMAGE_SIZE, rgb.IMAGE_SIZE, 3))
  eps = jnp.zeros((b, *model.latent_shape))
  features_and_logits = lambda m, x: (f := m.features(x, True, split=b), m.logit(f, True))
  with nn.intercept_methods(interceptor):
    network[0] = "gen"
    jax.eval_shape(lambda: model.init(key, images, eps, eps, train=True))
    network[0] = "disc"
    d_batch = jnp.zeros((2 * b, *images.shape[1:]))  # [real | generated]
    jax.eval_shape(lambda: disc.init({"params": key, "dropout": key}, d_batch,
                                     method=features_and_logits))
    if config.objective.kappa:
      network[0] = "mi"
      feats = jnp.zeros((b, 4, 4, 8 * disc.width))  # the generated rows' trunk features
      jax.eval_shape(lambda: mi_head.init(key, feats, train=True))
  return list(calls.values())


def module_jax_times(layer: LayerCall, x, dy, repeats: int, conv_impl: str):
  """(forward ms, forward + backward ms) of the crvae_jax module, w.r.t. x and params."""
  if layer.kind == "max_pool2":
    apply, params = (lambda x, params: rgb.max_pool2(x)), {}
  else:
    variables = layer.module.init(jax.random.key(0), x)
    params = variables.pop("params", {})
    state = list(variables)  # BatchNorm's batch_stats (training mode)

    def apply(x, params):
      out = layer.module.apply({"params": params, **variables}, x, mutable=state or False)
      return out[0] if state else out
  opts = compiled.compiler_options(conv_impl)  # as the model's programs compile them
  fwd = jax.jit(apply, compiler_options=opts)
  both = jax.jit(forward_and_backward(apply), compiler_options=opts)
  x, dy = jnp.asarray(x), jnp.asarray(dy)
  a = best_ms(lambda: fwd(x, params).block_until_ready(), repeats)
  b = best_ms(lambda: jax.block_until_ready(both(x, params, dy)), repeats)
  return a, b


def layer_call_times(torch, layer: LayerCall, rng, repeats: int, conv_impl: str):
  """(jax fwd, jax fwd+bwd, torch fwd, torch fwd+bwd) ms of one row on random inputs,
  with a pause between the frameworks (PyTorch's OpenMP threads spin after work)."""
  x = rng.standard_normal(layer.in_shape, np.float32)
  dy = rng.standard_normal(layer.out_shape, np.float32)
  jf, jb = module_jax_times(layer, x, dy, repeats, conv_impl)
  time.sleep(0.5)
  tf, tb = module_torch_times(torch, layer, x, dy, repeats)
  time.sleep(0.5)
  return jf, jb, tf, tb


def module_torch_times(torch, layer: LayerCall, x, dy, repeats: int):
  """(forward ms, forward + backward ms) of the layer in PyTorch, channels_last."""
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  from benchmarks import torch_gan_reference, torch_reference  # pylint: disable=g-import-not-at-top
  cl = torch.channels_last
  nchw = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).contiguous(memory_format=cl)
  image_like = len(layer.in_shape) == 4
  tx = (nchw(x) if image_like else torch.from_numpy(x)).requires_grad_()
  tdy = nchw(dy) if len(layer.out_shape) == 4 else torch.from_numpy(dy)
  m, c = layer.module, layer.in_shape[-1]
  rng = np.random.default_rng(1)
  param = lambda *shape: torch.from_numpy(
      (rng.standard_normal(shape) * 0.05).astype(np.float32)).requires_grad_()
  params = []
  if layer.kind in ("conv", "deconv"):
    k, s, p = m.kernel_size, m.stride, m.padding
    shape = (m.features, c, k, k) if layer.kind == "conv" else (c, m.features, k, k)
    w = param(*shape).detach().contiguous(memory_format=cl).requires_grad_()
    bias = param(m.features) if getattr(m, "use_bias", False) else None
    params = [w] + ([bias] if bias is not None else [])
    f = ((lambda: F.conv2d(tx, w, bias, stride=s, padding=p)) if layer.kind == "conv"
         else (lambda: F.conv_transpose2d(tx, w, stride=s, padding=p)))
  elif layer.kind == "bn":
    params = [param(c), param(c)]
    f = lambda: F.batch_norm(tx, None, None, params[0], params[1], training=True,
                             eps=m.epsilon)
  elif layer.kind == "max_pool2":
    f = lambda: F.max_pool2d(tx, 2)
  elif layer.kind == "minibatch":  # the PyTorch port's own form (torch.cdist)
    d = torch_gan_reference.Discriminator(1, c, m.num_kernels, m.kernel_dim)
    params = [d.minibatch_kernel]
    f = lambda: d.minibatch(tx)
  elif layer.kind == "lstm":  # one nn.LSTM call (oneDNN), as in the port
    net = torch_reference.make_lstm(c, m.hidden, m.num_layers)
    params = [q for q in net.parameters() if q.requires_grad]
    f = lambda: net(tx)[0]
  else:
    raise ValueError(f"unknown layer kind {layer.kind!r}")
  with torch.no_grad():
    a = best_ms(f, repeats)
  b = best_ms(lambda: torch.autograd.grad(f(), [tx] + params, tdy), repeats)
  return a, b


def gan_table(torch, config, repeats: int) -> None:
  """Prints the Stage1 rows of `config` (the model's conv_impl vs torch)."""
  impl = layers.resolve_conv_impl(config.model.conv_impl)
  print(f"# {config.row} {config.scale} scale: width {config.model.width}, batch "
        f"{config.train.batch_size}; jax conv_impl {impl!r}")
  print("| layer | calls | fwd jax | fwd torch | bwd jax | bwd torch | "
        "fwd+bwd torch / jax |")
  print("|---|---|---|---|---|---|---|")
  rng = np.random.default_rng(0)
  total = np.zeros(4)
  for layer in gan_layers(config):
    jf, jb, tf, tb = layer_call_times(torch, layer, rng, repeats, impl)
    row = np.array([jf, tf, jb - jf, tb - tf])
    total += layer.calls * row
    print(f"| {layer.name} | {layer.calls} | " + " | ".join(f"{v:.2f}" for v in row) +
          f" | {tb / jb:.2f} |", flush=True)
  print("| **sum (x calls)** | | " + " | ".join(f"{v:.1f}" for v in total) +
        f" | {(total[1] + total[3]) / (total[0] + total[2]):.2f} |")


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", choices=("mnist", "gan"), default="mnist")
  p.add_argument("--batch", type=int, default=None,
                 help="mnist: default 128; gan: default the config's train.batch_size")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--scale", choices=("cpu", "paper"), default=None,
                 help="model scale (width); default: paper for mnist, cpu for gan")
  p.add_argument("--row", choices=gan_throughput.GAN_ROWS, default="crvaegan",
                 help="gan only")
  p.add_argument("--conv_impl", choices=layers.CONV_IMPLS, default=None,
                 help="gan only: overrides the config's model.conv_impl")
  p.add_argument("--impls", default=None,
                 help="mnist only: the conv_impl columns (cpu, xla, onednn; default "
                      "cpu,xla), the first also running the LSTM and BatchNorm rows and "
                      "the ratio column")
  args = p.parse_args()
  if args.model == "gan" and args.impls is not None:
    p.error("--impls is for --model=mnist; the GAN table has one JAX column: choose its "
            "kernels with --conv_impl")
  if args.model == "mnist" and args.conv_impl is not None:
    p.error("--conv_impl is for --model=gan; the MNIST table's columns are --impls")
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(os.cpu_count())
  from benchmarks.nll_eval import machine_line  # pylint: disable=g-import-not-at-top
  config = None
  scale = args.scale or ("paper" if args.model == "mnist" else "cpu")
  if args.model == "gan":
    config = gan_throughput.config_at_scale(args.row, scale)
    if args.batch is not None:
      config.train.batch_size = args.batch
    if args.conv_impl is not None:
      config.model.conv_impl = args.conv_impl
  batch = config.train.batch_size if config else args.batch or 128
  print(f"# {machine_line()} | torch {torch.__version__}, {torch.get_num_threads()} "
        f"threads, channels_last; batch {batch}; best of {args.repeats}; ms")
  if config is None:
    from experiments.configs import mnist as mnist_configs  # pylint: disable=g-import-not-at-top
    model = mnist_configs.config_at_scale("crvae", scale).model
    print(f"# MNIST crVAE convolutions, LSTMs and BatchNorms, {scale} scale: width "
          f"{model.width}, "
          f"LSTM hidden {model.lstm_hidden}, T={model.num_blocks}")
    impls = tuple((args.impls or "cpu,xla").split(","))
    known = [i for i in layers.CONV_IMPLS if i != "auto"]
    bad = [i for i in impls if i not in known]
    if bad:
      p.error(f"--impls: {bad} not among {known}")
    mnist_table(torch, batch, args.repeats, model, impls)
  else:
    gan_table(torch, config, args.repeats)


if __name__ == "__main__":
  host_memory.reexec_with_hugepages()
  main()
