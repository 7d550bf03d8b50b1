"""The 64x64 VAE-GAN / crVAE-GAN (Stage1) family and its hooks on the engine.

`train` runs (or resumes) the data-parallel step of `train.stage1_step` over batches
decoded and augmented on worker threads, and writes metrics.jsonl / TensorBoard,
checkpoints every `train.checkpoint_every_steps` and grids of prior samples and
reconstructions every `train.sample_every_steps`. `sample` restores a checkpoint and
writes the grids. A run is a function of (config, step): batch order, augmentation and
every random draw follow the step, so a resumed run continues exactly.
"""

import os
from typing import NamedTuple, Optional

import jax
import numpy as np

from crvae_jax import compiled, config_checks, distributed, images, sharding
from crvae_jax.data import rgb as rgb_data
from crvae_jax.data.image_source import RandomAccessImages
from crvae_jax.data.mnist import TrainOrder
from crvae_jax.families import model_kwargs
from crvae_jax.models.rgb import Discriminator, MIHead, RgbVAE
from crvae_jax.train import engine, optimizer, stage1_step, workdir_lock

MODES = ("train", "sample", "complete")


class Parts(NamedTuple):
  model: RgbVAE
  disc: Discriminator
  mi_head: MIHead
  g_tx: object  # generator + MI head optimizer
  d_tx: object  # gated discriminator optimizer
  weights: stage1_step.GanWeights


def check(config, num_devices: int, training: bool = True) -> None:
  del training  # every check applies to sampling too
  config_checks.check_rgb_config(config, num_devices)


def build(config, axis_name: Optional[str] = sharding.BATCH_AXIS) -> Parts:
  """Modules, optimizers and loss weights of `config` (axis_name None: outside a mesh,
  e.g. for initialisation and sampling)."""
  m, o, opt = config.model, config.objective, config.optim
  model = RgbVAE(**model_kwargs(m, RgbVAE), bn_axis_name=axis_name)
  disc = Discriminator(width=m.width, hidden=m.disc_hidden, num_kernels=m.minibatch_kernels,
                       kernel_dim=m.minibatch_kernel_dim, conv_impl=m.conv_impl,
                       axis_name=axis_name)
  mi_head = MIHead(latent_channels=m.latent_channels, conv_impl=m.conv_impl,
                   bn_axis_name=axis_name, fused_backward=m.get("fused_backward", False))
  g_tx = optimizer.make_optimizer(
      learning_rate=opt.learning_rate, lstm_lr_divisor=opt.lstm_lr_divisor,
      lstm_grad_clip=opt.lstm_grad_clip, halve_every_steps=opt.halve_every_steps,
      b1=opt.b1, b2=opt.b2, eps=opt.eps)
  d_tx = optimizer.make_discriminator_optimizer(
      learning_rate=opt.learning_rate, trunk_lr_factor=opt.disc_trunk_lr_factor,
      warmup=opt.disc_warmup, b1=opt.b1, b2=opt.b2, eps=opt.eps)
  weights = stage1_step.GanWeights(alpha1=o.alpha1, alpha2=o.alpha2, beta=o.beta,
                                   kappa=o.kappa)
  return Parts(model, disc, mi_head, g_tx, d_tx, weights)


def init_state(config, abstract: bool = False) -> stage1_step.GanState:
  """Fresh parameters and optimizer states from train.seed; abstract=True: only their
  shapes and dtypes (jax.eval_shape; nothing is compiled), e.g. as a restore target."""
  local = build(config, axis_name=None)
  init = lambda: stage1_step.init_gan_state(local.model, local.disc, local.mi_head,
                                            local.g_tx, local.d_tx,
                                            jax.random.key(config.train.seed),
                                            use_mi=config.objective.kappa > 0)
  return jax.eval_shape(init) if abstract else init()


def generator_variables(state: stage1_step.GanState) -> dict:
  """The generator's {'params', 'batch_stats'} (what sampling needs)."""
  return {"params": state.gen["params"], "batch_stats": state.gen["batch_stats"]}


def fixed_images(source: RandomAccessImages, num: int, seed: int,
                 size: int = rgb_data.IMAGE_SIZE) -> np.ndarray:
  """`num` images [n, size, size, 3] in [-1, 1] chosen by `seed` (sorted indices), centre
  crops without flips: the same images in every reconstruction grid of a run."""
  num = min(num, len(source))
  idx = np.sort(np.random.default_rng(seed).choice(len(source), num, replace=False))
  batch = source.load(idx)
  offset = (batch.shape[1] - size) // 2
  return batch[:, offset:offset + size, offset:offset + size]


def grid_fns(model: RgbVAE):
  """Jitted (variables, eps) -> prior samples and (variables, x) -> reconstructions
  (z = posterior mean), BN with its running averages."""
  prior = compiled.jit(lambda v, eps: model.apply(v, eps, method=model.decode),
                       model=model)
  recon = compiled.jit(lambda v, x: model.apply(
      v, model.apply(v, x, method=model.encode).mean, method=model.decode), model=model)
  return prior, recon


def to_unit(x) -> np.ndarray:
  """Images in [-1, 1] -> float32 in [0, 1]."""
  return (np.asarray(x, np.float32) + 1.0) / 2.0


def write_grids(model: RgbVAE, variables, fixed: np.ndarray, config, directory: str,
                tag: str, fns=None) -> tuple:
  """prior_<tag>.png (sample.num_images prior samples, seed sample.seed) and
  reconstructions_<tag>.png (each fixed image next to its reconstruction). Process 0
  draws them alone in a multi-process run."""
  paths = (os.path.join(directory, f"prior_{tag}.png"),
           os.path.join(directory, f"reconstructions_{tag}.png"))
  if not distributed.is_main():
    return paths
  variables = sharding.local_copy(variables)
  prior_fn, recon_fn = fns or grid_fns(model)
  eps = jax.random.normal(jax.random.key(config.sample.seed),
                          (config.sample.num_images,) + model.latent_shape)
  prior_path = images.save_grid(paths[0], to_unit(prior_fn(variables, eps)), scale=1)
  pairs = images.interleave_pairs(to_unit(fixed), to_unit(recon_fn(variables, fixed)))
  cols = 2 * int(np.ceil(np.sqrt(len(fixed))))
  recon_path = images.save_grid(paths[1], pairs, num_cols=cols, scale=1)
  return prior_path, recon_path


class GanFamily(engine.Family):
  """What the GAN families (Stage1, Stage2) share on the engine: images from config.data
  (`source`, opened at first use when not given), train.num_steps with the step
  intervals, batches decoded and augmented on worker threads, the progress fields."""

  crop_size = rgb_data.IMAGE_SIZE  # the side of the training images

  def __init__(self, config, *, source: Optional[RandomAccessImages] = None, mesh=None):
    super().__init__(config, mesh)
    self._source = source

  @property
  def source(self) -> RandomAccessImages:
    if self._source is None:
      self._source = rgb_data.open_source(self.config.data)
    return self._source

  def schedule(self) -> engine.Schedule:
    t = self.config.train
    return engine.Schedule(total_steps=t.num_steps, log_every=t.log_every_steps,
                           checkpoint_every=t.checkpoint_every_steps,
                           sample_every=t.sample_every_steps)

  def batches(self, start: int):
    t = self.config.train
    order = TrainOrder(num_examples=len(self.source), batch_size=t.batch_size, seed=t.seed)
    return rgb_data.training_batches(self.source, order, start, t.num_steps,
                                     flip=self.config.data.flip, seed=t.seed,
                                     crop_size=self.crop_size,
                                     rows=sharding.process_rows(self.mesh, t.batch_size))

  def progress(self, summary: dict, num_steps: int) -> dict:
    del num_steps
    return dict(g=f"{summary['loss_g']:.3f}", d=f"{summary['loss_d']:.3f}",
                d_acc=f"{summary['d_accuracy']:.2f}",
                img_s=f"{summary['examples_per_s']:.0f}")


class Family(GanFamily):
  """Stage1 on the engine."""

  def __init__(self, config, *, source: Optional[RandomAccessImages] = None, mesh=None):
    super().__init__(config, source=source, mesh=mesh)
    self.parts = build(config)
    self.local_model = self.parts.model.clone(bn_axis_name=None)
    self._grids = None
    self._gated = [0.0, 0]  # gated D updates, steps (summed over the logged intervals)

  check = staticmethod(check)

  def init_state(self, abstract: bool = False):
    return init_state(self.config, abstract)

  def make_step(self):
    p = self.parts
    step = stage1_step.make_gan_step(p.model, p.disc, p.mi_head, p.g_tx, p.d_tx,
                                     p.weights, self.mesh,
                                     max_d_accuracy=self.config.objective.max_d_accuracy)
    rng = jax.random.key(self.config.train.seed)
    return lambda state, batch: step(state, batch, rng)

  def describe(self, state) -> str:
    n = engine.num_params
    return (f"{self.config.model.variant} on {len(self.source):,} images: generator "
            f"{n(state.gen['params']):,}, discriminator {n(state.disc['params']):,}, MI "
            f"head {n(state.mi.get('params', {})):,} parameters; batch "
            f"{self.config.train.batch_size}")

  def progress(self, summary: dict, num_steps: int) -> dict:
    self._gated[0] += float(summary["d_update_skipped"]) * num_steps  # a fraction
    self._gated[1] += num_steps
    return dict(super().progress(summary, num_steps),
                gated=f"{summary['d_update_skipped']:.2f}")

  def draw(self, state, workdir: str, tag: str) -> None:
    if self._grids is None:
      c = self.config
      self._grids = (grid_fns(self.local_model),
                     fixed_images(self.source, c.sample.num_images, c.sample.seed))
    fns, fixed = self._grids
    write_grids(self.local_model, generator_variables(state), fixed, self.config,
                os.path.join(workdir, "samples"), tag, fns)

  def summarize(self, last_train: dict, last_valid: dict) -> dict:
    out = super().summarize(last_train, last_valid)  # the last logged interval
    out["d_update_skipped_fraction"] = self._gated[0] / max(self._gated[1], 1)
    return out


def train(config, workdir: str, *, source: Optional[RandomAccessImages] = None) -> dict:
  """Train (or resume) the Stage1 GAN of `config` in `workdir`; returns a summary
  (also written to train_summary.json): the last logged metrics, the fraction of gated
  discriminator updates, skipped steps and throughput."""
  return engine.train(Family(config, source=source), workdir)


def restore(config, workdir: str, step: Optional[int] = None):
  """(Parts built outside a mesh, state, step): `workdir`'s latest (or `step`)
  checkpoint on the default device."""
  family = Family(config, mesh=sharding.make_mesh(config.train.num_devices))
  state, step = engine.restore_trained(family, workdir, step=step)
  return build(config, axis_name=None), state, step


def sample(config, workdir: str, *, source: Optional[RandomAccessImages] = None) -> tuple:
  """Restore the latest (or `sample.checkpoint_step`) checkpoint and write its grids to
  <workdir>/samples/prior_sampled_<step>.png and reconstructions_sampled_<step>.png."""
  check(config, sharding.make_mesh(config.train.num_devices).size)
  parts, state, step = restore(config, workdir, config.sample.checkpoint_step)
  source = source or rgb_data.open_source(config.data)
  fixed = fixed_images(source, config.sample.num_images, config.sample.seed)
  with workdir_lock.hold(workdir):
    paths = write_grids(parts.model, generator_variables(state), fixed, config,
                        os.path.join(workdir, "samples"), f"sampled_{step:07d}")
  distributed.info(f"step {step}: wrote {paths[0]} and {paths[1]}")
  return paths
