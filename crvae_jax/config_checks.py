"""Reject impossible configs before anything is compiled, naming the key at fault.

Unknown or mistyped keys and wrong types are already refused by ml_collections (configs
are locked and typed); this checks the values.
"""

from crvae_jax.data import TEST_SETS
from crvae_jax.models.layers import CONV_IMPLS
from crvae_jax.models.mnist import VARIANTS

OBJECTIVES = ("elbo", "iwae")
CHECKPOINTS = ("best", "latest")


class ConfigError(ValueError):
  """A config value that cannot work; the message names the key and what is allowed."""


def _require(ok: bool, key: str, value, allowed: str):
  if not ok:
    raise ConfigError(f"config.{key}={value!r} is invalid: {allowed}")


def check_mnist_config(config, num_devices: int) -> None:
  """Raise ConfigError for the first impossible value in an MNIST config."""
  m, o, t, e = config.model, config.objective, config.train, config.eval
  _require(m.variant in VARIANTS, "model.variant", m.variant, f"one of {VARIANTS}")
  _require(m.conv_impl in CONV_IMPLS, "model.conv_impl", m.conv_impl,
           f"one of {CONV_IMPLS}")
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
  _require(config.data.test_set in TEST_SETS, "data.test_set", config.data.test_set,
           f"one of {TEST_SETS}")
  _require(config.data.test_set != "larochelle" or bool(config.data.larochelle_dir),
           "data.larochelle_dir", config.data.larochelle_dir,
           "test_set='larochelle' needs the folder holding binarized_mnist_*.amat")


def _check_gan_steps_and_source(t, d) -> None:
  """The train.* step intervals and the data source of the GAN configs (Stage1, Stage2)."""
  from crvae_jax.data.rgb import RGB_SOURCES  # pylint: disable=g-import-not-at-top
  for key in ("num_steps", "log_every_steps", "checkpoint_every_steps",
              "sample_every_steps", "max_nonfinite_steps"):
    _require(t[key] >= 1, f"train.{key}", t[key], "must be >= 1")
  _require(d.source in RGB_SOURCES, "data.source", d.source, f"one of {RGB_SOURCES}")
  _require(d.source != "folder" or bool(d.image_dir), "data.image_dir", d.image_dir,
           "data.source='folder' needs the folder of JPEG/PNG images")
  _require(d.source != "tfds" or bool(d.tfds_name), "data.tfds_name", d.tfds_name,
           "data.source='tfds' needs a dataset name, e.g. 'celeb_a'")


def check_rgb_config(config, num_devices: int) -> None:
  """Raise ConfigError for the first impossible value in a 64x64 RGB (GAN) config."""
  from crvae_jax.data.rgb import IMAGE_SIZE  # pylint: disable=g-import-not-at-top
  from crvae_jax.models.rgb import RGB_VARIANTS  # pylint: disable=g-import-not-at-top
  m, o, t, d = config.model, config.objective, config.train, config.data
  _require(m.variant in RGB_VARIANTS, "model.variant", m.variant, f"one of {RGB_VARIANTS}")
  _require(m.conv_impl in CONV_IMPLS, "model.conv_impl", m.conv_impl,
           f"one of {CONV_IMPLS}")
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


def check_stage2_config(config, num_devices: int, training: bool = True) -> None:
  """Raise ConfigError for the first impossible value in a Stage2 config, including (when
  training) a perceptual term (gamma > 0) without its weights file."""
  import os  # pylint: disable=g-import-not-at-top
  from crvae_jax.models import stage2  # pylint: disable=g-import-not-at-top
  from crvae_jax.train.stage2_step import ADVERSARIAL  # pylint: disable=g-import-not-at-top
  m, o, p, t, d = config.model, config.objective, config.perceptual, config.train, config.data
  _require(bool(config.stage1.workdir), "stage1.workdir", config.stage1.workdir,
           "the workdir of the trained Stage1 run")
  _require(bool(config.stage1.config), "stage1.config", config.stage1.config,
           "the Stage1 config string, e.g. 'experiments/configs/rgb.py:celeba_crvaegan'")
  _require(m.encode_to in stage2.ENCODE_TO, "model.encode_to", m.encode_to,
           f"one of {stage2.ENCODE_TO}")
  try:
    stage2.generator_plan(m.image_size, m.encode_to)
    stage2.discriminator_plan(m.image_size)
  except ValueError as e:
    raise ConfigError(f"config.{e}") from e
  _require(m.upsample in stage2.UPSAMPLE, "model.upsample", m.upsample,
           f"one of {stage2.UPSAMPLE}")
  _require(m.conv_impl in CONV_IMPLS, "model.conv_impl", m.conv_impl, f"one of {CONV_IMPLS}")
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
           f"torchvision's checkpoint once with `python experiments/"
           f"convert_torchvision_weights.py --arch={p.network} --input=<{p.network} .pth> "
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
