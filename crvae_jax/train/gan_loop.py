"""Training and sampling of the 64x64 VAE-GAN / crVAE-GAN (Stage1) from a config.

`train` runs (or resumes) the data-parallel step of `gan_step` over batches decoded and
augmented on worker threads, and writes metrics.jsonl / TensorBoard, checkpoints every
`train.checkpoint_every_steps` and grids of prior samples and reconstructions every
`train.sample_every_steps`. `sample` restores a checkpoint and writes the grids. Like the
MNIST loop, a run is a function of (config, step): batch order, augmentation and every
random draw follow the step, so a resumed run continues exactly.
"""

import os
import time
from typing import NamedTuple, Optional

import jax
import numpy as np

from crvae_jax import config_checks, distributed, images
from crvae_jax.data import rgb as rgb_data
from crvae_jax.data.image_source import RandomAccessImages
from crvae_jax.data.mnist import TrainOrder
from crvae_jax.models.rgb import Discriminator, MIHead, RgbVAE
from crvae_jax.train import checkpoints, gan_step, gan_steps, optimizer, parallel
from crvae_jax.train.metrics import MetricWriter


class GanParts(NamedTuple):
  model: RgbVAE
  disc: Discriminator
  mi_head: MIHead
  g_tx: object  # generator + MI head optimizer
  d_tx: object  # gated discriminator optimizer
  weights: gan_step.GanWeights


def build(config, axis_name: Optional[str] = parallel.BATCH_AXIS) -> GanParts:
  """Modules, optimizers and loss weights of `config` (axis_name None: outside a mesh,
  e.g. for initialisation and sampling)."""
  m, o, opt = config.model, config.objective, config.optim
  model = RgbVAE(variant=m.variant, num_blocks=m.num_blocks, width=m.width,
                 lstm_hidden=m.lstm_hidden, latent_channels=m.latent_channels,
                 conv_impl=m.conv_impl, bn_axis_name=axis_name)
  disc = Discriminator(width=m.width, hidden=m.disc_hidden, num_kernels=m.minibatch_kernels,
                       kernel_dim=m.minibatch_kernel_dim, conv_impl=m.conv_impl,
                       axis_name=axis_name)
  mi_head = MIHead(latent_channels=m.latent_channels, conv_impl=m.conv_impl,
                   bn_axis_name=axis_name)
  g_tx = optimizer.make_optimizer(
      learning_rate=opt.learning_rate, lstm_lr_divisor=opt.lstm_lr_divisor,
      lstm_grad_clip=opt.lstm_grad_clip, halve_every_steps=opt.halve_every_steps,
      b1=opt.b1, b2=opt.b2, eps=opt.eps)
  d_tx = optimizer.make_discriminator_optimizer(
      learning_rate=opt.learning_rate, trunk_lr_factor=opt.disc_trunk_lr_factor,
      warmup=opt.disc_warmup, b1=opt.b1, b2=opt.b2, eps=opt.eps)
  weights = gan_step.GanWeights(alpha1=o.alpha1, alpha2=o.alpha2, beta=o.beta,
                                kappa=o.kappa)
  return GanParts(model, disc, mi_head, g_tx, d_tx, weights)


def init_state(config, abstract: bool = False) -> gan_step.GanState:
  """Fresh parameters and optimizer states from train.seed; abstract=True: only their
  shapes and dtypes (jax.eval_shape; nothing is compiled), e.g. as a restore target."""
  local = build(config, axis_name=None)
  init = lambda: gan_step.init_gan_state(local.model, local.disc, local.mi_head,
                                         local.g_tx, local.d_tx,
                                         jax.random.key(config.train.seed),
                                         use_mi=config.objective.kappa > 0)
  return jax.eval_shape(init) if abstract else init()


def generator_variables(state: gan_step.GanState) -> dict:
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


def _grid_fns(model: RgbVAE):
  """Jitted (variables, eps) -> prior samples and (variables, x) -> reconstructions
  (z = posterior mean), BN with its running averages."""
  prior = jax.jit(lambda v, eps: model.apply(v, eps, method=model.decode))
  recon = jax.jit(lambda v, x: model.apply(
      v, model.apply(v, x, method=model.encode).mean, method=model.decode))
  return prior, recon


def write_grids(model: RgbVAE, variables, fixed: np.ndarray, config, directory: str,
                tag: str, fns=None) -> tuple:
  """prior_<tag>.png (sample.num_images prior samples, seed sample.seed) and
  reconstructions_<tag>.png (each fixed image next to its reconstruction). Process 0
  draws them alone in a multi-process run."""
  paths = (os.path.join(directory, f"prior_{tag}.png"),
           os.path.join(directory, f"reconstructions_{tag}.png"))
  if not distributed.is_main():
    return paths
  variables = parallel.local_copy(variables)
  prior_fn, recon_fn = fns or _grid_fns(model)
  eps = jax.random.normal(jax.random.key(config.sample.seed),
                          (config.sample.num_images,) + model.latent_shape)
  to_unit = lambda x: (np.asarray(x, np.float32) + 1.0) / 2.0  # [-1, 1] -> [0, 1]
  prior_path = images.save_grid(paths[0], to_unit(prior_fn(variables, eps)), scale=1)
  pairs = images.interleave_pairs(to_unit(fixed), to_unit(recon_fn(variables, fixed)))
  cols = 2 * int(np.ceil(np.sqrt(len(fixed))))
  recon_path = images.save_grid(paths[1], pairs, num_cols=cols, scale=1)
  return prior_path, recon_path


def train(config, workdir: str, *, source: Optional[RandomAccessImages] = None,
          log=print) -> dict:
  """Train (or resume) the Stage1 GAN of `config` in `workdir`; returns a summary
  (also written to train_summary.json): the last logged metrics, the fraction of gated
  discriminator updates, skipped steps and throughput."""
  t_start = time.time()
  main_process = distributed.is_main()
  log = distributed.main_only(log)
  os.makedirs(workdir, exist_ok=True)
  mesh = parallel.make_mesh(config.train.num_devices)
  config_checks.check_rgb_config(config, mesh.size)
  checkpoints.refuse_other_config(workdir, config)
  source = source or rgb_data.open_source(config.data, log=log)
  t = config.train
  order = TrainOrder(num_examples=len(source), batch_size=t.batch_size, seed=t.seed)
  parts = build(config)
  ckpts = checkpoints.Checkpoints(workdir, best=False)
  state, restored_step = gan_steps.resume_or_init(
      ckpts, lambda abstract=False: init_state(config, abstract), config, workdir,
      main_process=main_process, log=log)
  state = parallel.replicate(mesh, state)
  count = lambda tree: sum(p.size for p in jax.tree.leaves(tree))
  log(f"{config.model.variant} on {len(source):,} images: generator "
      f"{count(state.gen['params']):,}, discriminator {count(state.disc['params']):,}, "
      f"MI head {count(state.mi.get('params', {})):,} parameters; {mesh.size} device(s) "
      f"({distributed.describe()}); "
      f"batch {t.batch_size}; {t.num_steps} steps")
  step_fn = gan_step.make_gan_step(parts.model, parts.disc, parts.mi_head, parts.g_tx,
                                   parts.d_tx, parts.weights, mesh,
                                   max_d_accuracy=config.objective.max_d_accuracy)
  local_model = parts.model.clone(bn_axis_name=None)
  grid_fns = _grid_fns(local_model)
  fixed = fixed_images(source, config.sample.num_images, config.sample.seed)
  samples_dir = os.path.join(workdir, "samples")
  start = int(jax.device_get(state.step))
  finished = gan_steps.finished_summary(workdir, start, t.num_steps, ckpts, log)
  if finished is not None:
    return finished
  rng = jax.random.key(t.seed)
  writer = MetricWriter(workdir, enabled=main_process)
  batches = rgb_data.training_batches(source, order, start, t.num_steps,
                                      flip=config.data.flip, seed=t.seed,
                                      rows=parallel.process_rows(mesh, t.batch_size))
  gated = [0.0, 0]  # gated D updates, steps (summed over the logged intervals)

  def on_log(summary, num_steps):
    gated[0] += float(summary["d_update_skipped"]) * num_steps  # a fraction per interval
    gated[1] += num_steps
    return dict(g=f"{summary['loss_g']:.3f}", d=f"{summary['loss_d']:.3f}",
                d_acc=f"{summary['d_accuracy']:.2f}",
                gated=f"{summary['d_update_skipped']:.2f}",
                img_s=f"{summary['examples_per_s']:.0f}")

  state, summary, skipped = gan_steps.run_steps(
      lambda s, b: step_fn(s, b, rng), state, batches, mesh=mesh, train_config=t,
      workdir=workdir, ckpts=ckpts, writer=writer, restored_step=restored_step,
      start=start, t_start=t_start, log=log, main_process=main_process, desc="train",
      on_log=on_log,
      draw=lambda s, tag: write_grids(local_model, generator_variables(s), fixed, config,
                                      samples_dir, tag, grid_fns))
  out = {k: float(v) for k, v in summary.items() if np.ndim(v) == 0}  # last interval
  out.update(d_update_skipped_fraction=gated[0] / max(gated[1], 1),
             skipped_steps=skipped, train_seconds=time.time() - t_start)
  if main_process:
    gan_steps.write_summary(workdir, out)
  return out


def sample(config, workdir: str, *, source: Optional[RandomAccessImages] = None,
           log=print) -> tuple:
  """Restore the latest (or `sample.checkpoint_step`) checkpoint and write its grids to
  <workdir>/samples/prior_sampled_<step>.png and reconstructions_sampled_<step>.png."""
  config_checks.check_rgb_config(config, parallel.make_mesh(config.train.num_devices).size)
  ckpts = checkpoints.Checkpoints(workdir, best=False)
  state, step = ckpts.restore(init_state(config, abstract=True),
                              step=config.sample.checkpoint_step)
  ckpts.close()
  if state is None:
    raise FileNotFoundError(f"no checkpoint in {os.path.abspath(workdir)}: train first "
                            "(--mode=train) or point --workdir at a trained run")
  source = source or rgb_data.open_source(config.data, log=log)
  model = build(config, axis_name=None).model
  fixed = fixed_images(source, config.sample.num_images, config.sample.seed)
  paths = write_grids(model, generator_variables(state), fixed, config,
                      os.path.join(workdir, "samples"), f"sampled_{step:07d}")
  log(f"step {step}: wrote {paths[0]} and {paths[1]}")
  return paths
