r"""A/B of the Stage1 (VAE-GAN / crVAE-GAN) and Stage2 train steps (issue 19).

  python -m benchmarks.ab_gan_step --config=experiments/configs/rgb.py:emoji_crvaegan,cpu \
      --variants=HEAD,worktree --rounds=5 --steps=5

Builds one train step per variant in this process, then times them alternately
(--rounds rounds of --steps steps each, the order flipping every round) and prints the
median img/s and ms/step of each. On a VM whose speed drifts, or that other jobs share,
only figures from one run compare.

Variants:
  worktree   the step and models of this working tree.
  <git ref>  (e.g. HEAD, a commit) the GAN-path modules (`GAN_MODULES`: the models and
             step of the family) as they are at that ref, run against this tree's shared
             modules (layers, fast_conv, lstm, optimizer, ...).
  <dir>      (starting with '/' or '.') the same modules from copies under <dir> (at
             their paths in the repository), e.g. a snapshot of an intermediate change.
  Either may end in '+xla' (model.conv_impl='xla': the plain XLA ops with XLA's default
  compiler options) or a kernel variant of `ab_train_step.KERNEL_VARIANTS`:
  '+matmul_deconv' (every transposed conv in fast_conv's matmul + overlap-add form,
  whatever its input size).

`--config` takes a Stage1 (experiments/configs/rgb.py:ROW[,cpu]) or Stage2
(experiments/configs/stage2.py:ROW[,cpu]) config; overrides: --width, --batch. Images
are random; Stage2's frozen Stage1 has random weights (speed only). `GanTrainer` is also
what `benchmarks/profile_step.py --config=...` profiles.
"""

import argparse
import importlib
import os
import re
import subprocess
import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax

# pylint: disable=g-import-not-at-top
from benchmarks.ab_train_step import KERNEL_VARIANTS, kernel_variant
from benchmarks.flops import count_flops
from benchmarks.nll_eval import machine_line, matmul_gflops
from benchmarks.train_throughput import timed_images_per_s
from crvae_jax import host_memory, sharding
from crvae_jax.families import model_kwargs
from crvae_jax.train import optimizer
from experiments.configs import rgb as rgb_configs

# The modules a git ref replaces, per family (key -> path). Modules that import one
# another by name would still get this tree's copy, so the trainer is handed each one.
GAN_MODULES = {
    "stage1": {"rgb": "crvae_jax/models/rgb.py",
               "step": "crvae_jax/train/stage1_step.py"},
    "stage2": {"rgb": "crvae_jax/models/rgb.py",
               "stage2": "crvae_jax/models/stage2.py",
               "step": "crvae_jax/train/stage2_step.py"},
}


def load_config(spec: str):
  """'experiments/configs/rgb.py:emoji_crvaegan,cpu' -> its ConfigDict."""
  path, _, arg = spec.partition(":")
  name = path.removesuffix(".py").replace("/", ".")
  return importlib.import_module(name).get_config(arg)


def modules_at(ref: str, family: str) -> dict:
  """The family's GAN-path modules: this tree's ('worktree'), or `git show ref:path` (or
  the copy under a directory `ref`) executed as fresh modules."""
  out = {}
  for key, path in GAN_MODULES[family].items():
    name = path.removesuffix(".py").replace("/", ".")
    if ref == "worktree":
      out[key] = importlib.import_module(name)
      continue
    if ref.startswith(("/", ".")):  # a directory holding copies of the files
      with open(os.path.join(ref, path), encoding="utf-8") as f:
        source = f.read()
    else:
      source = subprocess.run(["git", "show", f"{ref}:{path}"], check=True,
                              capture_output=True, text=True).stdout
    module = types.ModuleType(name + "_at_" + re.sub(r"\W", "_", ref))
    module.__file__ = f"{ref}:{path}"
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, module.__file__, "exec"), module.__dict__)  # pylint: disable=exec-used
    out[key] = module
  return out


class GanTrainer:
  """The Stage1 or Stage2 train step of `config` on all local devices (random images),
  built and compiled on construction (`startup_s`: init + compile + the first step),
  then timed by `run`. `ref`: 'worktree' or a git ref (`modules_at`)."""

  def __init__(self, config, ref: str = "worktree"):
    self.config = config
    self.family = config.get("family", "stage1")
    mods = modules_at(ref, self.family)
    t0 = time.perf_counter()
    self.mesh = sharding.make_mesh(config.train.num_devices)
    batch, size = config.train.batch_size, (
        config.model.image_size if self.family == "stage2" else 64)
    rng = np.random.default_rng(0)
    host = rng.uniform(-1, 1, (4, batch, size, size, 3)).astype(np.float32)
    self.batches = [sharding.shard_batch(self.mesh, b) for b in host]
    self.key = jax.random.key(0)
    build = self._build_stage1 if self.family == "stage1" else self._build_stage2
    self.state, self.step_fn, self.flops_fn = build(config, mods)
    self._steps(1)
    self.startup_s = time.perf_counter() - t0

  def _build_stage1(self, config, mods):
    m, o, opt = config.model, config.objective, config.optim
    rgb, step_mod = mods["rgb"], mods["step"]

    def parts(axis_name, conv_impl=m.conv_impl):
      kw = dict(model_kwargs(m, rgb.RgbVAE), conv_impl=conv_impl)
      model = rgb.RgbVAE(**kw, bn_axis_name=axis_name)
      disc = rgb.Discriminator(width=m.width, hidden=m.disc_hidden,
                               num_kernels=m.minibatch_kernels,
                               kernel_dim=m.minibatch_kernel_dim, conv_impl=conv_impl,
                               axis_name=axis_name)
      mi = rgb.MIHead(latent_channels=m.latent_channels, conv_impl=conv_impl,
                      bn_axis_name=axis_name)
      return model, disc, mi
    g_tx = optimizer.make_optimizer(
        learning_rate=opt.learning_rate, lstm_lr_divisor=opt.lstm_lr_divisor,
        lstm_grad_clip=opt.lstm_grad_clip, halve_every_steps=opt.halve_every_steps)
    d_tx = optimizer.make_discriminator_optimizer(learning_rate=opt.learning_rate)
    weights = step_mod.GanWeights(alpha1=o.alpha1, alpha2=o.alpha2, beta=o.beta,
                                  kappa=o.kappa)
    state = step_mod.init_gan_state(*parts(None), g_tx, d_tx, jax.random.key(0),
                                    use_mi=o.kappa > 0)
    state = sharding.replicate(self.mesh, state)
    step = step_mod.make_gan_step(*parts(sharding.BATCH_AXIS), g_tx, d_tx, weights,
                                  self.mesh, max_d_accuracy=o.max_d_accuracy)
    plain = step_mod.make_gan_step(*parts(sharding.BATCH_AXIS, "xla"), g_tx, d_tx,
                                   weights, self.mesh, max_d_accuracy=o.max_d_accuracy)
    self._lower = lambda: step.lower(self.state, self.batches[0], self.key)
    return state, step, plain

  def _build_stage2(self, config, mods):
    m, opt = config.model, config.optim
    rgb, s2, step_mod = mods["rgb"], mods["stage2"], mods["step"]
    s1c = rgb_configs.get_config(config.row + (",cpu" if config.scale == "cpu" else ""))
    stage1 = rgb.RgbVAE(**model_kwargs(s1c.model, rgb.RgbVAE))
    x = jnp.zeros((2, 64, 64, 3))
    eps = jnp.zeros((2,) + stage1.latent_shape)
    s1_vars = jax.jit(stage1.init)(jax.random.key(1), x, eps, eps)
    frozen = sharding.replicate(self.mesh, {"stage1": s1_vars, "perceptual": {}})
    if config.objective.gamma:
      raise ValueError("the benchmark runs Stage2 without the perceptual term (gamma 0)")

    def parts(axis_name, conv_impl=m.conv_impl):
      gen = s2.Stage2Generator(**dict(model_kwargs(m, s2.Stage2Generator),
                                      conv_impl=conv_impl), bn_axis_name=axis_name)
      disc = s2.Stage2Discriminator(image_size=m.image_size, width=m.disc_width,
                                    conv_impl=conv_impl, bn_axis_name=axis_name)
      return gen, disc
    adam = lambda: optax.adam(opt.learning_rate, b1=opt.b1, b2=opt.b2, eps=opt.eps)
    g_tx, d_tx = adam(), adam()
    state = step_mod.init_stage2_state(*parts(None), g_tx, d_tx, jax.random.key(0))
    state = sharding.replicate(self.mesh, state)

    def make(conv_impl):
      gen, disc = parts(sharding.BATCH_AXIS, conv_impl)
      s1 = stage1.clone(conv_impl=conv_impl)
      fn = step_mod.make_stage2_step(stage1=s1, gen=gen, disc=disc, g_tx=g_tx, d_tx=d_tx,
                                     mesh=self.mesh, gamma=0.0,
                                     adversarial=config.objective.adversarial)
      return fn, lambda s, b, k: fn(s, frozen, b, k)
    jitted, step = make(m.conv_impl)
    self._lower = lambda: jitted.lower(self.state, frozen, self.batches[0], self.key)
    return state, step, make("xla")[1]

  def _steps(self, n: int, first: int = 0):
    for i in range(n):
      self.state, m = self.step_fn(self.state, self.batches[(first + i) % 4], self.key)
    jax.block_until_ready(m)
    return m

  def run(self, steps: int, warmup: int = 1) -> float:
    """Train images/s over `steps` steps after `warmup` untimed ones."""
    return timed_images_per_s(self._steps, steps, warmup, self.config.train.batch_size,
                              ("loss_g",))

  def hlo_text(self) -> str:
    """The compiled step's HLO (what runs; op names match the profiler's)."""
    return self._lower().compile().as_text()

  def flops_per_step(self) -> float:
    """Model FLOPs of one step, counted from the plain formulation (conv_impl 'xla'),
    without the unused halves of its two backward passes."""
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                           sharding=x.sharding),
                            self.state)
    return count_flops(self.flops_fn, abstract, self.batches[0], self.key, live_only=True)


def apply_overrides(config, args):
  if args.width:
    config.model.width = args.width
  if args.batch:
    config.train.batch_size = args.batch
  return config


def build(variant: str, args) -> GanTrainer:
  ref, _, suffix = variant.partition("+")
  config = apply_overrides(load_config(args.config), args)
  if suffix in KERNEL_VARIANTS:  # an earlier form of one kernel (compiled now)
    with kernel_variant(suffix):
      return GanTrainer(config, ref)
  if suffix:
    config.model.conv_impl = suffix
  return GanTrainer(config, ref)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", default="experiments/configs/rgb.py:emoji_crvaegan,cpu")
  p.add_argument("--width", type=int, default=0, help="model.width override (0: keep)")
  p.add_argument("--batch", type=int, default=0, help="train.batch_size override")
  p.add_argument("--variants", default="HEAD,worktree")
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--peak", action="store_true", help="also measure the matmul peak and "
                 "print each variant's share of it")
  args = p.parse_args()
  names = args.variants.split(",")
  trainers = {n: build(n, args) for n in names}
  times = {n: [] for n in names}
  peaks = []
  for r in range(args.rounds):
    for n in (names if r % 2 == 0 else names[::-1]):
      times[n].append(trainers[n].run(args.steps))
    if args.peak:
      peaks.append(matmul_gflops())
  config = next(iter(trainers.values())).config
  batch = config.train.batch_size
  print(f"# {machine_line()}")
  print(f"# command: python -m benchmarks.ab_gan_step {' '.join(sys.argv[1:])}")
  print(f"# {args.config}: width {config.model.width}, batch {batch}")
  if args.peak:
    flops = trainers[names[-1]].flops_per_step()
    peak = float(np.median(peaks))
    print(f"# matmul peak (4096^2 fp32, median of rounds): {peak:.0f} GFLOP/s; model "
          f"FLOPs per step {flops / 1e9:.2f} G (plain formulation)")
  print("| variant | start-up s | train img/s (median) | ms/step | "
        + ("of peak | " if args.peak else "") + "rounds img/s |")
  print("|---|---|---|---|" + ("---|" if args.peak else "") + "---|")
  for n in names:
    ips = float(np.median(times[n]))
    share = f"{ips / batch * flops / 1e9 / peak:.1%} | " if args.peak else ""
    print(f"| {n} | {trainers[n].startup_s:.1f} | {ips:.1f} | {batch / ips * 1e3:.0f} | "
          + share + " / ".join(f"{t:.1f}" for t in times[n]) + " |")


if __name__ == "__main__":
  host_memory.reexec_with_hugepages()
  main()
