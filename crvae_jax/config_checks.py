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
