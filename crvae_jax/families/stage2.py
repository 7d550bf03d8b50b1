"""The Stage2 super-resolution GAN on a frozen Stage1, and its hooks on the engine.

Stage1 is restored from `config.stage1.workdir` with the Stage1 family's own machinery,
from the config that run was trained with (its config.json). All three travel with the
Stage2 run: at the first start the Stage1 config is saved as <workdir>/stage1_config.json,
the frozen Stage1 generator's variables as <workdir>/stage1_frozen.msgpack (flax
serialization) and the Stage1 step, with the copy's sha256, pinned in
<workdir>/stage1.json. A resumed Stage2 run and `sample` read the copy, so they use the
same Stage1 even if Stage1 trains on and its checkpoint of that step is rotated away or
deleted (runs pinned before the copy existed read the Stage1 workdir). Stage2 keeps its
own Orbax checkpoints, metrics and grids in its workdir and resumes, saves on SIGTERM and
skips non-finite steps like every family on the engine.

Grids (samples/): stage2_prior_<tag>.png, prior samples as pairs (Stage1 64x64 upscaled
bicubically | Stage2); stage2_reconstructions_<tag>.png, fixed images as triples
(ground truth | Stage1 reconstruction, upscaled bicubically | Stage2). Stage2 earns its
place only where it beats the bicubic upscale beside it: stage2_vs_bicubic_<tag>.json
scores both against the ground truth of the fixed images (PSNR, SSIM, paired).
"""

import hashlib
import json
import os
from typing import NamedTuple, Optional

import jax
import ml_collections
import numpy as np
import optax
from flax import serialization
from jax.experimental import multihost_utils

from crvae_jax import compiled, config_checks, distributed, image_metrics, images
from crvae_jax import sharding, stats
from crvae_jax.data import rgb as rgb_data
from crvae_jax.data.image_source import RandomAccessImages
from crvae_jax.families import model_kwargs, stage1
from crvae_jax.models import perceptual
from crvae_jax.models.stage2 import Stage2Discriminator, Stage2Generator
from crvae_jax.train import checkpoints, engine, stage2_step, workdir_lock

MODES = ("train", "sample")
PIN_FILE, STAGE1_CONFIG_FILE = "stage1.json", "stage1_config.json"
FROZEN_FILE = "stage1_frozen.msgpack"


class Parts(NamedTuple):
  gen: Stage2Generator
  disc: Stage2Discriminator
  g_tx: optax.GradientTransformation
  d_tx: optax.GradientTransformation


def check(config, num_devices: int, training: bool = True) -> None:
  config_checks.check_stage2_config(config, num_devices, training=training)


def build(config, axis_name: Optional[str] = sharding.BATCH_AXIS) -> Parts:
  """Modules and optimizers of `config` (axis_name None: outside a mesh)."""
  m, opt = config.model, config.optim
  gen = Stage2Generator(**model_kwargs(m, Stage2Generator), bn_axis_name=axis_name)
  disc = Stage2Discriminator(image_size=m.image_size, width=m.disc_width,
                             conv_impl=m.conv_impl, bn_axis_name=axis_name)
  adam = lambda: optax.adam(opt.learning_rate, b1=opt.b1, b2=opt.b2, eps=opt.eps)
  return Parts(gen, disc, adam(), adam())


def init_state(config, abstract: bool = False) -> stage2_step.Stage2State:
  """Fresh state from train.seed; abstract=True: only shapes and dtypes."""
  p = build(config, axis_name=None)
  init = lambda: stage2_step.init_stage2_state(p.gen, p.disc, p.g_tx, p.d_tx,
                                               jax.random.key(config.train.seed))
  return jax.eval_shape(init) if abstract else init()


def _read_json(path: str) -> Optional[dict]:
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def stage1_config(config, workdir: str) -> ml_collections.ConfigDict:
  """The config the Stage1 run was trained with: <workdir>/stage1_config.json (saved at
  the Stage2 run's first start), else <stage1.workdir>/config.json."""
  saved = _read_json(os.path.join(workdir, STAGE1_CONFIG_FILE))
  if saved is None:
    saved = checkpoints.read_config_json(config.stage1.workdir)
  if saved is None:
    raise FileNotFoundError(
        f"config.stage1.workdir={config.stage1.workdir!r} holds no config.json: train "
        "Stage1 first (python -m experiments.main --config=experiments/configs/rgb.py:"
        f"<row> --workdir={config.stage1.workdir} --mode=train)")
  s1_config = ml_collections.ConfigDict(saved)
  checkpoints.portable_kernels(s1_config, f"the Stage1 config of {workdir}")
  return s1_config


def _frozen_copy(workdir: str, pinned: dict, s1_config, pin_path: str):
  """The pinned Stage1 generator variables from the Stage2 workdir's copy; None for runs
  pinned before the copy existed."""
  if "sha256" not in pinned:
    return None
  path = os.path.join(workdir, FROZEN_FILE)
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise checkpoints.CheckpointDamagedError(
        f"{path} (the frozen Stage1 pinned in {pin_path}) cannot be read ({e}); restore "
        "it from a backup, or start Stage2 in a new --workdir") from None
  if hashlib.sha256(data).hexdigest() != pinned["sha256"]:
    raise checkpoints.CheckpointDamagedError(
        f"{path} (the frozen Stage1 pinned in {pin_path}) does not match its sha256: the "
        "file is damaged; restore it from a backup, or start Stage2 in a new --workdir")
  target = stage1.generator_variables(stage1.init_state(s1_config, abstract=True))
  target = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), target)
  return serialization.from_bytes(target, data)


def data_differences(config, s1_config) -> list:
  """['data.emoji_categories: ...'] where Stage2's data is not what Stage1 trained on.
  Compared only when both read the same kind of source: emoji (its sets, split and
  categories) or tfds (the dataset's name); a folder may hold the same images as a
  tfds dataset, so other pairs cannot be told apart and pass."""
  from crvae_jax.data import emoji  # pylint: disable=g-import-not-at-top
  now, then = config.data, s1_config.get("data", {})
  source = now.get("source")
  if then.get("source") != source:
    return []
  if source == "emoji":
    keys = checkpoints.DATA_IDENTITY_KEYS
  elif source == "tfds":
    keys = {"tfds_name": None}
  else:
    return []
  parsers = {"emoji_sets": emoji.parse_sets, "emoji_categories": emoji.parse_categories}

  def same(key, a, b):  # the sets and categories as sets: spacing, case, order aside
    try:
      return sorted(parsers[key](a)) == sorted(parsers[key](b))
    except (KeyError, ValueError):
      return a == b
  return [f"data.{k}: {now.get(k, legacy)!r} (Stage2) != {then.get(k, legacy)!r} (Stage1)"
          for k, legacy in keys.items() if not same(k, now.get(k, legacy),
                                                   then.get(k, legacy))]


def restore_stage1(config, workdir: str, *, pin: bool = False):
  """(Stage1 model, its generator variables, step): the Stage2 workdir's frozen copy when
  the run is pinned, else config.stage1.workdir's stage1.checkpoint_step (default: the
  latest). pin=True (the first start) records the Stage1 config, a copy of its
  generator's variables and the step in the Stage2 workdir."""
  s1_dir, step = config.stage1.workdir, config.stage1.checkpoint_step
  pin_path = os.path.join(workdir, PIN_FILE)
  pinned = _read_json(pin_path)
  if pinned is not None:
    if pinned["workdir"] != os.path.abspath(s1_dir):
      raise config_checks.ConfigError(
          f"config.stage1.workdir={s1_dir!r} is not the Stage1 run this Stage2 run was "
          f"started on ({pinned['workdir']}, pinned in {pin_path}); use that workdir, or "
          "a new Stage2 --workdir")
    if step is not None and step != pinned["step"]:
      raise config_checks.ConfigError(
          f"config.stage1.checkpoint_step={step} differs from the Stage1 step this Stage2 "
          f"run was started on ({pinned['step']}, pinned in {pin_path}); leave it unset, "
          "or use a new Stage2 --workdir")
    step = pinned["step"]
  s1_config = stage1_config(config, workdir)
  # At the first start only: a resumed run's data are held to its own config.json by the
  # engine's identity check, and an existing run stays loadable for sampling.
  differences = data_differences(config, s1_config) if pinned is None else []
  if differences:
    raise config_checks.ConfigError(
        f"Stage2 would train on other data than the Stage1 run at "
        f"config.stage1.workdir={s1_dir!r} learned from: {'; '.join(differences)}. Set "
        "those keys to Stage1's values (its config.json)")
  if pinned is not None:
    frozen = _frozen_copy(workdir, pinned, s1_config, pin_path)
    if frozen is not None:
      return stage1.build(s1_config, axis_name=None).model, frozen, pinned["step"]
  try:
    parts, state, restored = stage1.restore(s1_config, s1_dir, step)
  except FileNotFoundError as e:
    raise FileNotFoundError(f"config.stage1.workdir={s1_dir!r}: {e}"
                            + (f" (step pinned in {pin_path})" if pinned else "")) from e
  variables = stage1.generator_variables(state)
  if pin and distributed.is_main() and pinned is None:
    # The config and the copy first: a pin is never left without what it refers to.
    checkpoints.write_file_atomic(os.path.join(workdir, STAGE1_CONFIG_FILE),
                                  s1_config.to_json_best_effort(indent=2, sort_keys=True))
    data = serialization.to_bytes(jax.device_get(variables))
    checkpoints.write_bytes_atomic(os.path.join(workdir, FROZEN_FILE), data)
    checkpoints.write_file_atomic(pin_path, json.dumps(
        {"workdir": os.path.abspath(s1_dir), "step": int(restored),
         "sha256": hashlib.sha256(data).hexdigest()}))
  if pin and pinned is None and jax.process_count() > 1:
    # Each process restored Stage1's latest step itself, and Stage1 may have saved a
    # newer one in between: every process takes the copy process 0 pinned.
    multihost_utils.sync_global_devices("crvae_jax_stage1_pin")
    pinned = _read_json(pin_path)
    return (parts.model, _frozen_copy(workdir, pinned, s1_config, pin_path),
            pinned["step"])
  return parts.model, variables, restored


def load_features(config):
  """(perceptual module, variables) for gamma > 0, else (None, {})."""
  if not config.objective.gamma:
    return None, {}
  p = config.perceptual
  return perceptual.load_perceptual(p.network, p.weights, p.layer or None)


def bicubic_upscale(x: np.ndarray, size: int) -> np.ndarray:
  """[n, s, s, C] in [0, 1] -> [n, size, size, C], bicubic, clipped to [0, 1]: the
  baseline a Stage2 output is shown beside (the same Stage1 image, upscaled)."""
  up = jax.image.resize(np.asarray(x, np.float32), (x.shape[0], size, size, x.shape[3]),
                        "cubic")
  return np.clip(np.asarray(up), 0.0, 1.0)


def grid_fns(stage1_model, gen: Stage2Generator):
  """Jitted (stage1 vars, gen vars, eps) -> (64x64, high-res) prior samples, and
  (stage1 vars, gen vars, high-res images) -> (64x64 reconstructions from the posterior
  mean, their Stage2 outputs); BN with running averages."""
  def prior(s1, g, eps):
    low = stage1_model.apply(s1, eps, method=stage1_model.decode)
    return low, gen.apply(g, low)

  def recon(s1, g, x):
    q = stage1_model.apply(s1, stage2_step.to_stage1_input(x), method=stage1_model.encode)
    low = stage1_model.apply(s1, q.mean, method=stage1_model.decode)
    return low, gen.apply(g, low)
  return compiled.jit(prior, model=gen), compiled.jit(recon, model=gen)


def write_grids(fns, stage1_vars, gen_vars, latent_shape, fixed: np.ndarray, config,
                directory: str, tag: str) -> tuple:
  """stage2_prior_<tag>.png and stage2_reconstructions_<tag>.png (process 0 only)."""
  paths = (os.path.join(directory, f"stage2_prior_{tag}.png"),
           os.path.join(directory, f"stage2_reconstructions_{tag}.png"))
  if not distributed.is_main():
    return paths
  # Both on this process's first device (Stage1 restored on one, Stage2 on the mesh).
  stage1_vars, gen_vars = jax.device_put(sharding.local_copy((stage1_vars, gen_vars)),
                                         jax.local_devices()[0])
  size, unit = config.model.image_size, stage1.to_unit
  side = lambda n: int(np.ceil(np.sqrt(n)))
  eps = jax.random.normal(jax.random.key(config.sample.seed),
                          (config.sample.num_images,) + tuple(latent_shape))
  low, high = map(unit, fns[0](stage1_vars, gen_vars, eps))
  pairs = images.interleave_pairs(bicubic_upscale(low, size), high)
  images.save_grid(paths[0], pairs, num_cols=2 * side(len(eps)), scale=1)
  low, high = map(unit, fns[1](stage1_vars, gen_vars, fixed))
  upscaled = bicubic_upscale(low, size)
  triples = np.stack([unit(fixed), upscaled, high], 1)  # [n, 3, S, S, 3]
  images.save_grid(paths[1], triples.reshape((-1,) + triples.shape[2:]),
                   num_cols=3 * side(len(fixed)), scale=1)
  with open(os.path.join(directory, f"stage2_vs_bicubic_{tag}.json"), "w",
            encoding="utf-8") as f:
    json.dump(versus_bicubic(np.asarray(fixed), upscaled * 2 - 1, high * 2 - 1), f, indent=1)
  return paths


def versus_bicubic(truth, bicubic, stage2) -> dict:
  """PSNR and SSIM over whole images ([N, S, S, 3] in [-1, 1]) of Stage2's outputs and
  of the bicubic upscales of the same Stage1 images against the high-resolution truth:
  means and the paired per-image difference (Stage2 minus bicubic) with its SE."""
  everywhere = np.ones(truth.shape[:3] + (1,))
  out = {"images": len(truth)}
  for name, metric in (("psnr", image_metrics.masked_psnr),
                       ("ssim", image_metrics.masked_ssim)):
    a, b = metric(truth, stage2, everywhere), metric(truth, bicubic, everywhere)
    difference, se = stats.paired_difference(a, b)
    out[name] = {"stage2": float(a.mean()), "bicubic": float(b.mean()),
                 "difference": difference, "difference_se": se}
  return out


class Family(stage1.GanFamily):
  """Stage2 on the engine; `setup` restores (and pins) the frozen Stage1 and loads the
  perceptual network."""

  desc = "stage2"

  def __init__(self, config, *, source: Optional[RandomAccessImages] = None, mesh=None):
    super().__init__(config, source=source, mesh=mesh)
    self.crop_size = config.model.image_size
    self.parts = build(config)
    self.stage1 = self.stage1_vars = self.stage1_step = self.frozen = None
    self.features = None
    self._grids = None

  check = staticmethod(check)

  def setup(self, workdir: str) -> None:
    self.features, features_vars = load_features(self.config)  # fails early without weights
    self.stage1, self.stage1_vars, self.stage1_step = restore_stage1(self.config, workdir,
                                                                     pin=True)
    self.frozen = sharding.replicate(self.mesh, {"stage1": self.stage1_vars,
                                                 "perceptual": features_vars})

  def init_state(self, abstract: bool = False):
    return init_state(self.config, abstract)

  def make_step(self):
    c, p = self.config, self.parts
    step = stage2_step.make_stage2_step(
        stage1=self.stage1, gen=p.gen, disc=p.disc, g_tx=p.g_tx, d_tx=p.d_tx,
        mesh=self.mesh, gamma=c.objective.gamma, features=self.features,
        adversarial=c.objective.adversarial)
    rng = jax.random.key(c.train.seed)
    return lambda state, batch: step(state, self.frozen, batch, rng)

  def describe(self, state) -> str:
    c, size, n = self.config, self.config.model.image_size, engine.num_params
    return (f"Stage2 {size}x{size} on {len(self.source):,} images over Stage1 step "
            f"{self.stage1_step} of {c.stage1.workdir}: generator {n(state.gen['params']):,}"
            f", discriminator {n(state.disc['params']):,} parameters; gamma "
            f"{c.objective.gamma}; batch {c.train.batch_size}")

  def draw(self, state, workdir: str, tag: str) -> None:
    c = self.config
    if self._grids is None:
      self._grids = (grid_fns(self.stage1, self.parts.gen.clone(bn_axis_name=None)),
                     stage1.fixed_images(self.source, c.sample.num_images, c.sample.seed,
                                         c.model.image_size))
    fns, fixed = self._grids
    write_grids(fns, self.stage1_vars, state.gen, self.stage1.latent_shape, fixed, c,
                os.path.join(workdir, "samples"), tag)

  def summarize(self, last_train: dict, last_valid: dict) -> dict:
    return dict(super().summarize(last_train, last_valid), stage1_step=self.stage1_step)


def train(config, workdir: str, *, source: Optional[RandomAccessImages] = None) -> dict:
  """Train (or resume) the Stage2 GAN of `config` in `workdir`; returns a summary (also
  in train_summary.json): the last logged metrics, skipped steps, the Stage1 step."""
  return engine.train(Family(config, source=source), workdir)


def sample(config, workdir: str, *, source: Optional[RandomAccessImages] = None) -> tuple:
  """Restore the latest (or sample.checkpoint_step) Stage2 checkpoint and its pinned
  Stage1; write samples/stage2_prior_sampled_<step>.png and ..._reconstructions_...."""
  family = Family(config)
  check(config, family.mesh.size, training=False)
  state, step = engine.restore_trained(family, workdir, step=config.sample.checkpoint_step)
  stage1_model, stage1_vars, stage1_step = restore_stage1(config, workdir)
  source = source or rgb_data.open_source(config.data)
  size = config.model.image_size
  fixed = stage1.fixed_images(source, config.sample.num_images, config.sample.seed, size)
  fns = grid_fns(stage1_model, build(config, axis_name=None).gen)
  with workdir_lock.hold(workdir):
    paths = write_grids(fns, stage1_vars, state.gen, stage1_model.latent_shape, fixed,
                        config, os.path.join(workdir, "samples"), f"sampled_{step:07d}")
  distributed.info(f"Stage2 step {step} (Stage1 step {stage1_step}): wrote {paths[0]} "
                   f"and {paths[1]}")
  return paths
