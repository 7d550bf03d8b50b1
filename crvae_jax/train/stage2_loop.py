"""Training and sampling of the Stage2 super-resolution GAN on a frozen Stage1 (DESIGN.md 6).

Stage1 is restored from `config.stage1.workdir` with the Stage1 loop's own machinery
(`gan_loop.init_state` as the restore target; the model, objective and optim sections of
its config.json override `config.stage1.config`, so the target is what was saved). Its
step is pinned in <workdir>/stage1.json at the first start: a resumed Stage2 run and
`sample` use the same Stage1 even if Stage1 trains on. Stage2 keeps its own Orbax
checkpoints, metrics and grids in its workdir and resumes, saves on SIGTERM and skips
non-finite steps like `gan_loop`.

Grids (samples/): stage2_prior_<tag>.png, prior samples as pairs (Stage1 64x64 upscaled
by nearest neighbour | Stage2); stage2_reconstructions_<tag>.png, fixed images as triples
(ground truth | Stage1 reconstruction, upscaled | Stage2).
"""

import importlib.util
import json
import os
import time
from typing import NamedTuple, Optional

import jax
import numpy as np
import optax

from crvae_jax import config_checks, distributed, images
from crvae_jax.data import rgb as rgb_data
from crvae_jax.data.image_source import RandomAccessImages
from crvae_jax.data.mnist import TrainOrder
from crvae_jax.models import perceptual
from crvae_jax.models.stage2 import Stage2Discriminator, Stage2Generator
from crvae_jax.train import checkpoints, gan_loop, gan_steps, parallel, stage2_step
from crvae_jax.train.metrics import MetricWriter

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Stage2Parts(NamedTuple):
  gen: Stage2Generator
  disc: Stage2Discriminator
  g_tx: optax.GradientTransformation
  d_tx: optax.GradientTransformation


def build(config, axis_name: Optional[str] = parallel.BATCH_AXIS) -> Stage2Parts:
  """Modules and optimizers of `config` (axis_name None: outside a mesh)."""
  m, opt = config.model, config.optim
  gen = Stage2Generator(image_size=m.image_size, width=m.width, encode_to=m.encode_to,
                        num_res_blocks=m.num_res_blocks, upsample=m.upsample,
                        conv_impl=m.conv_impl, bn_axis_name=axis_name)
  disc = Stage2Discriminator(image_size=m.image_size, width=m.disc_width,
                             conv_impl=m.conv_impl, bn_axis_name=axis_name)
  adam = lambda: optax.adam(opt.learning_rate, b1=opt.b1, b2=opt.b2, eps=opt.eps)
  return Stage2Parts(gen, disc, adam(), adam())


def init_state(config, abstract: bool = False) -> stage2_step.Stage2State:
  """Fresh state from train.seed; abstract=True: only shapes and dtypes."""
  p = build(config, axis_name=None)
  init = lambda: stage2_step.init_stage2_state(p.gen, p.disc, p.g_tx, p.d_tx,
                                               jax.random.key(config.train.seed))
  return jax.eval_shape(init) if abstract else init()


def load_config_string(arg: str):
  """'experiments/configs/rgb.py:celeba_crvaegan' -> that file's get_config(variant); a
  relative path is looked up in the working directory, then in the repository."""
  path, _, variant = arg.partition(":")
  if not os.path.exists(path) and os.path.exists(os.path.join(REPO_ROOT, path)):
    path = os.path.join(REPO_ROOT, path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"config.stage1.config={arg!r}: no config file {path!r}")
  spec = importlib.util.spec_from_file_location("stage1_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant or None)


def stage1_config(config):
  """The Stage1 config: `stage1.config` with the identity of the saved run (the model,
  objective and optim sections of <stage1.workdir>/config.json) laid over it."""
  c = load_config_string(config.stage1.config)
  saved = checkpoints.read_config_json(config.stage1.workdir) or {}
  for section in ("model", "objective", "optim"):
    c[section].update(saved.get(section, {}))
  return c


def restore_stage1(config, workdir: str, *, pin: bool = False):
  """(Stage1 model, its generator variables, step) from config.stage1.workdir; the step
  is stage1.checkpoint_step, else the one pinned in <workdir>/stage1.json, else the
  latest (pin=True records it there)."""
  s1_dir, step = config.stage1.workdir, config.stage1.checkpoint_step
  pin_path = os.path.join(workdir, "stage1.json")
  if step is None and os.path.exists(pin_path):
    with open(pin_path, encoding="utf-8") as f:
      step = json.load(f)["step"]
  train_it = (f"train Stage1 first: python experiments/main.py --config="
              f"{config.stage1.config} --workdir={s1_dir} --mode=train")
  if not os.path.isdir(os.path.join(s1_dir, "checkpoints")):
    raise FileNotFoundError(f"config.stage1.workdir={s1_dir!r} holds no Stage1 "
                            f"checkpoints; {train_it}")
  s1_config = stage1_config(config)
  ckpts = checkpoints.Checkpoints(s1_dir, best=False)
  state, restored = ckpts.restore(gan_loop.init_state(s1_config, abstract=True), step=step)
  ckpts.close()
  if state is None:
    where = f"step {step} (pinned in {pin_path} or config.stage1.checkpoint_step)" \
        if step is not None else "any step"
    raise FileNotFoundError(f"config.stage1.workdir={s1_dir!r}: no Stage1 checkpoint at "
                            f"{where}; {train_it}")
  if pin and distributed.is_main() and not os.path.exists(pin_path):
    os.makedirs(workdir, exist_ok=True)
    with open(pin_path, "w", encoding="utf-8") as f:
      json.dump({"workdir": os.path.abspath(s1_dir), "step": int(restored)}, f)
  model = gan_loop.build(s1_config, axis_name=None).model
  return model, gan_loop.generator_variables(state), restored


def load_features(config):
  """(perceptual module, variables) for gamma > 0, else (None, {})."""
  if not config.objective.gamma:
    return None, {}
  p = config.perceptual
  return perceptual.load_perceptual(p.network, p.weights, p.layer or None)


def nearest_resize(x: np.ndarray, size: int) -> np.ndarray:
  """[n, s, s, C] -> [n, size, size, C], nearest neighbour (for side-by-side grids)."""
  idx = np.arange(size) * x.shape[1] // size
  return x[:, idx][:, :, idx]


def _grid_fns(stage1, gen: Stage2Generator):
  """Jitted (stage1 vars, gen vars, eps) -> (64x64, high-res) prior samples, and
  (stage1 vars, gen vars, high-res images) -> (64x64 reconstructions from the posterior
  mean, their Stage2 outputs); BN with running averages."""
  def prior(s1, g, eps):
    low = stage1.apply(s1, eps, method=stage1.decode)
    return low, gen.apply(g, low)

  def recon(s1, g, x):
    q = stage1.apply(s1, stage2_step.to_stage1_input(x), method=stage1.encode)
    low = stage1.apply(s1, q.mean, method=stage1.decode)
    return low, gen.apply(g, low)
  return jax.jit(prior), jax.jit(recon)


def write_grids(fns, stage1_vars, gen_vars, latent_shape, fixed: np.ndarray, config,
                directory: str, tag: str) -> tuple:
  """stage2_prior_<tag>.png and stage2_reconstructions_<tag>.png (process 0 only)."""
  paths = (os.path.join(directory, f"stage2_prior_{tag}.png"),
           os.path.join(directory, f"stage2_reconstructions_{tag}.png"))
  if not distributed.is_main():
    return paths
  # Both on this process's first device (Stage1 restored on one, Stage2 on the mesh).
  stage1_vars, gen_vars = jax.device_put(parallel.local_copy((stage1_vars, gen_vars)),
                                         jax.local_devices()[0])
  size = config.model.image_size
  unit = lambda x: (np.asarray(x, np.float32) + 1.0) / 2.0  # [-1, 1] -> [0, 1]
  side = lambda n: int(np.ceil(np.sqrt(n)))
  eps = jax.random.normal(jax.random.key(config.sample.seed),
                          (config.sample.num_images,) + tuple(latent_shape))
  low, high = map(unit, fns[0](stage1_vars, gen_vars, eps))
  pairs = images.interleave_pairs(nearest_resize(low, size), high)
  images.save_grid(paths[0], pairs, num_cols=2 * side(len(eps)), scale=1)
  low, high = map(unit, fns[1](stage1_vars, gen_vars, fixed))
  triples = np.stack([unit(fixed), nearest_resize(low, size), high], 1)  # [n, 3, S, S, 3]
  images.save_grid(paths[1], triples.reshape((-1,) + triples.shape[2:]),
                   num_cols=3 * side(len(fixed)), scale=1)
  return paths


def train(config, workdir: str, *, source: Optional[RandomAccessImages] = None,
          log=print) -> dict:
  """Train (or resume) the Stage2 GAN of `config` in `workdir`; returns a summary (also
  in train_summary.json): the last logged metrics, skipped steps, the Stage1 step."""
  t_start, main_process, log = time.time(), distributed.is_main(), distributed.main_only(log)
  mesh = parallel.make_mesh(config.train.num_devices)
  config_checks.check_stage2_config(config, mesh.size)
  os.makedirs(workdir, exist_ok=True)
  checkpoints.refuse_other_config(workdir, config)
  features, features_vars = load_features(config)  # fails early without weights
  stage1, stage1_vars, stage1_step = restore_stage1(config, workdir, pin=True)
  source = source or rgb_data.open_source(config.data, log=log)
  t, size = config.train, config.model.image_size
  parts = build(config)
  ckpts = checkpoints.Checkpoints(workdir, best=False)
  state, restored_step = gan_steps.resume_or_init(
      ckpts, lambda abstract=False: init_state(config, abstract), config, workdir,
      main_process=main_process, log=log)
  state = parallel.replicate(mesh, state)
  frozen = parallel.replicate(mesh, {"stage1": stage1_vars, "perceptual": features_vars})
  count = lambda tree: sum(p.size for p in jax.tree.leaves(tree))
  log(f"Stage2 {size}x{size} on {len(source):,} images over Stage1 step {stage1_step} of "
      f"{config.stage1.workdir}: generator {count(state.gen['params']):,}, discriminator "
      f"{count(state.disc['params']):,} parameters; gamma {config.objective.gamma}; "
      f"{mesh.size} device(s) ({distributed.describe()}); batch {t.batch_size}; "
      f"{t.num_steps} steps")
  step_fn = stage2_step.make_stage2_step(
      stage1=stage1, gen=parts.gen, disc=parts.disc, g_tx=parts.g_tx, d_tx=parts.d_tx,
      mesh=mesh, gamma=config.objective.gamma, features=features,
      adversarial=config.objective.adversarial)
  grid_fns = _grid_fns(stage1, parts.gen.clone(bn_axis_name=None))
  fixed = gan_loop.fixed_images(source, config.sample.num_images, config.sample.seed,
                                 size)
  samples_dir = os.path.join(workdir, "samples")
  start = int(jax.device_get(state.step))
  finished = gan_steps.finished_summary(workdir, start, t.num_steps, ckpts, log)
  if finished is not None:
    return finished
  rng = jax.random.key(t.seed)
  writer = MetricWriter(workdir, enabled=main_process)
  order = TrainOrder(num_examples=len(source), batch_size=t.batch_size, seed=t.seed)
  batches = rgb_data.training_batches(source, order, start, t.num_steps,
                                      flip=config.data.flip, seed=t.seed, crop_size=size,
                                      rows=parallel.process_rows(mesh, t.batch_size))

  def on_log(summary, num_steps):
    del num_steps
    return dict(g=f"{summary['loss_g']:.3f}", d=f"{summary['loss_d']:.3f}",
                d_acc=f"{summary['d_accuracy']:.2f}",
                img_s=f"{summary['examples_per_s']:.0f}")

  state, summary, skipped = gan_steps.run_steps(
      lambda s, b: step_fn(s, frozen, b, rng), state, batches, mesh=mesh,
      train_config=t, workdir=workdir, ckpts=ckpts, writer=writer,
      restored_step=restored_step, start=start, t_start=t_start, log=log,
      main_process=main_process, desc="stage2", on_log=on_log,
      draw=lambda s, tag: write_grids(grid_fns, stage1_vars, s.gen, stage1.latent_shape,
                                      fixed, config, samples_dir, tag))
  out = dict({k: float(v) for k, v in summary.items()}, skipped_steps=skipped,
             stage1_step=stage1_step,
             train_seconds=time.time() - t_start)
  if main_process:
    gan_steps.write_summary(workdir, out)
  return out


def sample(config, workdir: str, *, source: Optional[RandomAccessImages] = None,
           log=print) -> tuple:
  """Restore the latest (or sample.checkpoint_step) Stage2 checkpoint and its pinned
  Stage1; write samples/stage2_prior_sampled_<step>.png and ..._reconstructions_...."""
  config_checks.check_stage2_config(
      config, parallel.make_mesh(config.train.num_devices).size, training=False)
  ckpts = checkpoints.Checkpoints(workdir, best=False)
  state, step = ckpts.restore(init_state(config, abstract=True),
                              step=config.sample.checkpoint_step)
  ckpts.close()
  if state is None:
    raise FileNotFoundError(f"no Stage2 checkpoint in {os.path.abspath(workdir)}: train "
                            "first (--mode=train) or point --workdir at a trained run")
  stage1, stage1_vars, stage1_step = restore_stage1(config, workdir)
  source = source or rgb_data.open_source(config.data, log=log)
  size = config.model.image_size
  fixed = gan_loop.fixed_images(source, config.sample.num_images, config.sample.seed,
                                 size)
  fns = _grid_fns(stage1, build(config, axis_name=None).gen)
  paths = write_grids(fns, stage1_vars, state.gen, stage1.latent_shape, fixed, config,
                      os.path.join(workdir, "samples"), f"sampled_{step:07d}")
  log(f"Stage2 step {step} (Stage1 step {stage1_step}): wrote {paths[0]} and {paths[1]}")
  return paths
