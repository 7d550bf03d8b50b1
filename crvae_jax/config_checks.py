"""Reject impossible configs before anything is compiled, naming the key at fault.

Unknown or mistyped keys and wrong types are already refused by ml_collections (configs
are locked and typed); this checks the values.
"""

import os

from crvae_jax.data import TEST_SETS
from crvae_jax.data.rgb import IMAGE_SIZE, RGB_SOURCES
from crvae_jax.models import onednn_conv, stage2
from crvae_jax.models.layers import CONV_IMPLS, resolve_conv_impl
from crvae_jax.models.mnist import VARIANTS
from crvae_jax.models.rgb import RGB_VARIANTS
from crvae_jax.train.stage2_step import ADVERSARIAL

OBJECTIVES = ("elbo", "iwae")
CHECKPOINTS = ("best", "latest")
ESTIMATORS = ("is", "ais")  # eval.estimator: importance sampling or AIS (crvae_jax.ais)


class ConfigError(ValueError):
  """A config value that cannot work; the message names the key and what is allowed."""


def _require(ok: bool, key: str, value, allowed: str):
  if not ok:
    raise ConfigError(f"config.{key}={value!r} is invalid: {allowed}")


def _check_conv_impl(m) -> None:
  """model.conv_impl is known; 'onednn' also needs the CPU backend and its library
  built here (onednn_conv.load's error names what is missing)."""
  _require(m.conv_impl in CONV_IMPLS, "model.conv_impl", m.conv_impl,
           f"one of {CONV_IMPLS}")
  if m.conv_impl == "onednn":
    try:
      resolve_conv_impl(m.conv_impl)  # the CPU backend only
    except ValueError as e:
      raise ConfigError(f"config.{e}") from e
    try:
      onednn_conv.load()
    except RuntimeError as e:
      raise ConfigError(f"config.model.conv_impl='onednn' cannot be used here: {e}") from e


def check_mnist_config(config, num_devices: int) -> None:
  """Raise ConfigError for the first impossible value in an MNIST config."""
  m, o, t, e = config.model, config.objective, config.train, config.eval
  _require(m.variant in VARIANTS, "model.variant", m.variant, f"one of {VARIANTS}")
  _check_conv_impl(m)
  for key in ("width", "lstm_hidden", "latent_channels", "top_dim", "num_blocks"):
    _require(m[key] >= 1, f"model.{key}", m[key], "must be >= 1")
  _require(m.latent_channels % m.num_blocks == 0, "model.num_blocks", m.num_blocks,
           f"T must divide model.latent_channels={m.latent_channels}")
  if m.variant in ("crvae_inference", "crvae", "crvae_2layer"):
    _require((8 * m.width) % m.num_blocks == 0, "model.num_blocks", m.num_blocks,
             f"T must divide the encoder's 8 * model.width = {8 * m.width} channels")
  _require(o.kind in OBJECTIVES, "objective.kind", o.kind, f"one of {OBJECTIVES}")
  _require(o.beta >= 0, "objective.beta", o.beta, "KL weights must be >= 0")
  first = o.get("beta_first_blocks")
  _require(first is None or first >= 0, "objective.beta_first_blocks", first,
           "KL weights must be >= 0 (or None for beta)")
  _require(o.num_samples >= 1, "objective.num_samples", o.num_samples, "must be >= 1")
  _require(o.kind == "iwae" or o.num_samples == 1, "objective.num_samples",
           o.num_samples, "more than one sample needs objective.kind='iwae'")
  _require(config.optim.learning_rate > 0, "optim.learning_rate",
           config.optim.learning_rate, "must be > 0")
  _require(config.optim.lstm_lr_divisor > 0, "optim.lstm_lr_divisor",
           config.optim.lstm_lr_divisor, "must be > 0")
  _require(t.batch_size >= 1 and t.batch_size % num_devices == 0, "train.batch_size",
           t.batch_size, f"must be a positive multiple of the {num_devices} device(s)")
  _require(t.num_epochs > 0, "train.num_epochs", t.num_epochs, "must be > 0")
  _require(t.get("max_nonfinite_steps", 10) >= 1, "train.max_nonfinite_steps",
           t.get("max_nonfinite_steps"), "must be >= 1")
  for key in ("num_samples", "chunk_size", "batch_size", "report_k"):
    _require(e[key] >= 1, f"eval.{key}", e[key], "must be >= 1")
  _require(e.checkpoint in CHECKPOINTS, "eval.checkpoint", e.checkpoint,
           f"one of {CHECKPOINTS}")
  _require(e.get("estimator", "is") in ESTIMATORS, "eval.estimator", e.get("estimator"),
           f"one of {ESTIMATORS}")
  if e.get("estimator") == "ais":
    from crvae_jax import ais  # pylint: disable=g-import-not-at-top
    bad = ais.invalid_setting(**{k: e.ais[k] for k in ais.Settings._fields})
    if bad:
      _require(False, f"eval.ais.{bad[0]}", bad[1], bad[2])
  _require(config.data.test_set in TEST_SETS, "data.test_set", config.data.test_set,
           f"one of {TEST_SETS}")
  _require(config.data.test_set != "larochelle" or bool(config.data.larochelle_dir),
           "data.larochelle_dir", config.data.larochelle_dir,
           "test_set='larochelle' needs the folder holding binarized_mnist_*.amat")
  _require(t.log_every_steps >= 1, "train.log_every_steps", t.log_every_steps,
           "must be >= 1")
  for key in ("eval_every_epochs", "sample_every_epochs"):
    _require(t[key] > 0, f"train.{key}", t[key], "must be > 0 (a fraction of an epoch)")
  _require(config.data.num_valid >= 1, "data.num_valid", config.data.num_valid,
           "must be >= 1 (validation images held out of the training set)")
  _require(config.sample.num_images >= 1, "sample.num_images", config.sample.num_images,
           "must be >= 1")
  _check_shared_numbers(config)


def _check_shared_numbers(config) -> None:
  """Numeric keys that several families share (each checked where the config has it):
  seeds, device count, Adam's settings, decay interval, workers, checkpoint steps."""
  for section in ("train", "eval", "sample", "completion"):
    seed = config.get(section, {}).get("seed")
    _require(seed is None or seed >= 0, f"{section}.seed", seed,
             "must be >= 0 (numpy's generators refuse negative seeds)")
  devices = config.train.get("num_devices")
  _require(devices is None or devices >= 1, "train.num_devices", devices,
           "must be >= 1 (or None: all devices)")
  o = config.optim
  for key in ("b1", "b2"):
    _require(0 <= o[key] < 1, f"optim.{key}", o[key], "Adam's decay rates lie in [0, 1)")
  _require(o.eps > 0, "optim.eps", o.eps, "must be > 0 (Adam divides by sqrt(v) + eps)")
  if "lstm_grad_clip" in o:
    _require(o.lstm_grad_clip > 0, "optim.lstm_grad_clip", o.lstm_grad_clip,
             "must be > 0 (a gradient-norm bound)")
  for key in ("halve_every_steps", "halve_every_epochs"):
    if key in o:
      _require(o[key] >= 0, f"optim.{key}", o[key], "must be >= 0 (0: constant rates)")
  workers = config.get("data", {}).get("num_workers")
  _require(workers is None or workers >= 1, "data.num_workers", workers, "must be >= 1")
  for section in ("sample", "stage1"):
    step = config.get(section, {}).get("checkpoint_step")
    _require(step is None or step >= 1, f"{section}.checkpoint_step", step,
             "must be >= 1 (or None: the latest)")


def _check_gan_steps_and_source(t, d) -> None:
  """The train.* step intervals and the data source of the GAN configs (Stage1, Stage2)."""
  for key in ("num_steps", "log_every_steps", "checkpoint_every_steps",
              "sample_every_steps", "max_nonfinite_steps"):
    _require(t[key] >= 1, f"train.{key}", t[key], "must be >= 1")
  keep_every = t.get("keep_checkpoint_every_steps", 0)
  _require(keep_every >= 0 and keep_every % t.checkpoint_every_steps == 0,
           "train.keep_checkpoint_every_steps", keep_every,
           f"must be 0 (keep the last two only) or a multiple of "
           f"train.checkpoint_every_steps ({t.checkpoint_every_steps})")
  _require(d.source in RGB_SOURCES, "data.source", d.source, f"one of {RGB_SOURCES}")
  _require(d.source != "folder" or bool(d.image_dir), "data.image_dir", d.image_dir,
           "data.source='folder' needs the folder of JPEG/PNG images")
  _require(d.source != "tfds" or bool(d.tfds_name), "data.tfds_name", d.tfds_name,
           "data.source='tfds' needs a dataset name, e.g. 'celeb_a'")
  _require(not d.get("skip_bad_images") or d.get("verify_images"), "data.skip_bad_images",
           d.get("skip_bad_images"), "needs data.verify_images=True (the pass that finds "
           "the bad files)")
  if d.source == "emoji":
    _check_emoji_data(d)


def _check_emoji_data(d) -> None:
  """data.emoji_sets, data.emoji_split, data.emoji_categories and data.emoji_tarball (one
  tarball per set)."""
  from crvae_jax.data import emoji  # pylint: disable=g-import-not-at-top
  try:
    sets = emoji.parse_sets(d.emoji_sets)
  except ValueError as e:
    raise ConfigError(f"config.{e}") from e
  _require(d.emoji_split in emoji.SPLITS, "data.emoji_split", d.emoji_split,
           f"one of {emoji.SPLITS}")
  try:
    emoji.parse_categories(d.get("emoji_categories", ""))
  except ValueError as e:
    raise ConfigError(f"config.{e}") from e
  tarballs = [p for p in d.emoji_tarball.split(",") if p.strip()]
  _require(len(tarballs) in (0, len(sets)), "data.emoji_tarball", d.emoji_tarball,
           f"one tarball per set of data.emoji_sets={d.emoji_sets!r}, comma-separated in "
           "that order (or none: the cache or npm)")


def check_rgb_config(config, num_devices: int) -> None:
  """Raise ConfigError for the first impossible value in a 64x64 RGB (GAN) config."""
  m, o, t, d = config.model, config.objective, config.train, config.data
  _require(m.variant in RGB_VARIANTS, "model.variant", m.variant, f"one of {RGB_VARIANTS}")
  _check_conv_impl(m)
  for key in ("width", "lstm_hidden", "latent_channels", "num_blocks", "disc_hidden",
              "minibatch_kernels", "minibatch_kernel_dim"):
    _require(m[key] >= 1, f"model.{key}", m[key], "must be >= 1")
  _require(m.latent_channels % m.num_blocks == 0, "model.num_blocks", m.num_blocks,
           f"T must divide model.latent_channels={m.latent_channels}")
  for key in ("alpha1", "alpha2", "beta", "kappa"):
    _require(o[key] >= 0, f"objective.{key}", o[key], "weights must be >= 0")
  _require(m.variant == "crvaegan" or o.kappa == 0, "objective.kappa", o.kappa,
           "the MI term predicts the generation LSTM's output: crVAE-GAN only (use 0)")
  _require(o.max_d_accuracy <= 1, "objective.max_d_accuracy", o.max_d_accuracy,
           "an accuracy <= 1 (1: never gate; below 0: the discriminator never updates)")
  for key in ("learning_rate", "lstm_lr_divisor", "disc_trunk_lr_factor"):
    _require(config.optim[key] > 0, f"optim.{key}", config.optim[key], "must be > 0")
  _require(t.batch_size >= 2 and t.batch_size % (2 * num_devices) == 0, "train.batch_size",
           t.batch_size, f"must be a multiple of 2 x {num_devices} device(s): each device's "
           "discriminator batch is half real, a quarter prior samples, a quarter "
           "reconstructions")
  _check_gan_steps_and_source(t, d)
  if d.random_crop:
    _require(d.load_size >= IMAGE_SIZE, "data.load_size", d.load_size,
             f"random crops of {IMAGE_SIZE} need load_size >= {IMAGE_SIZE}")
  else:
    _require(d.load_size == IMAGE_SIZE, "data.load_size", d.load_size,
             f"without data.random_crop the images are loaded at {IMAGE_SIZE}")
  _require(config.sample.num_images >= 1, "sample.num_images", config.sample.num_images,
           "must be >= 1")
  _check_shared_numbers(config)
  if d.source == "emoji":
    from crvae_jax.data.emoji import SPLITS  # pylint: disable=g-import-not-at-top
    _require(config.completion.emoji_split in SPLITS, "completion.emoji_split",
             config.completion.emoji_split, f"one of {SPLITS}")


def check_stage2_config(config, num_devices: int, training: bool = True) -> None:
  """Raise ConfigError for the first impossible value in a Stage2 config, including (when
  training) a perceptual term (gamma > 0) without its weights file."""
  m, o, p, t, d = config.model, config.objective, config.perceptual, config.train, config.data
  _require(bool(config.stage1.workdir), "stage1.workdir", config.stage1.workdir,
           "the workdir of the trained Stage1 run")
  _require(m.encode_to in stage2.ENCODE_TO, "model.encode_to", m.encode_to,
           f"one of {stage2.ENCODE_TO}")
  try:
    stage2.generator_plan(m.image_size, m.encode_to)
    stage2.discriminator_plan(m.image_size)
  except ValueError as e:
    raise ConfigError(f"config.{e}") from e
  _require(m.upsample in stage2.UPSAMPLE, "model.upsample", m.upsample,
           f"one of {stage2.UPSAMPLE}")
  _check_conv_impl(m)
  for key in ("width", "disc_width"):
    _require(m[key] >= 1, f"model.{key}", m[key], "must be >= 1")
  _require(m.num_res_blocks >= 0, "model.num_res_blocks", m.num_res_blocks, "must be >= 0")
  _require(o.gamma >= 0, "objective.gamma", o.gamma, "must be >= 0 (0: no perceptual term)")
  _require(o.adversarial in ADVERSARIAL, "objective.adversarial", o.adversarial,
           f"one of {ADVERSARIAL}")
  _require(p.network in ("vgg11", "resnet50"), "perceptual.network", p.network,
           "one of ('vgg11', 'resnet50')")
  if o.gamma > 0 and training:
    how = (f"objective.gamma={o.gamma} needs the pretrained {p.network} weights: convert "
           f"torchvision's checkpoint once with `python -m experiments."
           f"convert_torchvision_weights --arch={p.network} --input=<{p.network} .pth> "
           f"--output=weights/{p.network}.npz` and pass --config.perceptual.weights="
           f"weights/{p.network}.npz (or --config.objective.gamma=0 to train without "
           "the perceptual loss)")
    _require(bool(p.weights), "perceptual.weights", p.weights, how)
    _require(os.path.exists(p.weights), "perceptual.weights", p.weights,
             "no such file; " + how)
  _require(config.optim.learning_rate > 0, "optim.learning_rate",
           config.optim.learning_rate, "must be > 0")
  _require(t.batch_size >= 1 and t.batch_size % num_devices == 0, "train.batch_size",
           t.batch_size, f"must be a positive multiple of the {num_devices} device(s)")
  _check_gan_steps_and_source(t, d)
  if d.random_crop:
    _require(d.load_size >= m.image_size, "data.load_size", d.load_size,
             f"random crops of model.image_size={m.image_size} need load_size >= it")
  else:
    _require(d.load_size == m.image_size, "data.load_size", d.load_size,
             f"without data.random_crop the images are loaded at model.image_size="
             f"{m.image_size}")
  _require(config.sample.num_images >= 1, "sample.num_images", config.sample.num_images,
           "must be >= 1")
  _check_shared_numbers(config)
