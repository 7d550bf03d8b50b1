"""Impossible configs are refused up front, with the key named."""

import pytest

from conftest import make_tiny_config
from crvae_jax import config_checks
from experiments.configs import mnist as mnist_configs


@pytest.mark.parametrize("key,value,message", [
    ("model.variant", "crave", "model.variant='crave'.*one of"),
    ("model.conv_impl", "cuda", "model.conv_impl='cuda'"),
    ("model.num_blocks", 3, "model.num_blocks=3.*divide model.latent_channels"),
    ("model.width", 0, "model.width=0.*>= 1"),
    ("objective.kind", "vae", "objective.kind='vae'"),
    ("objective.beta", -0.5, "objective.beta=-0.5.*>= 0"),
    ("objective.num_samples", 5, "objective.num_samples=5.*iwae"),
    ("optim.learning_rate", 0.0, "optim.learning_rate=0.0"),
    ("train.batch_size", 9, "train.batch_size=9.*multiple of the 2 device"),
    ("train.num_epochs", 0.0, "train.num_epochs"),
    ("eval.num_samples", 0, "eval.num_samples=0"),
    ("eval.checkpoint", "final", "eval.checkpoint='final'.*best"),
    ("data.test_set", "static", "data.test_set='static'.*seeded_static"),
    ("data.test_set", "larochelle", "data.larochelle_dir=''.*binarized_mnist"),
])
def test_bad_value_names_the_key(key, value, message):
  config = make_tiny_config()
  section, name = key.split(".")
  config[section][name] = value
  with pytest.raises(config_checks.ConfigError, match=message):
    config_checks.check_mnist_config(config, num_devices=2)


def test_every_shipped_config_passes():
  for row in mnist_configs.ROWS:
    for suffix in ("", ",cpu"):
      config_checks.check_mnist_config(mnist_configs.get_config(row + suffix), 2)


def test_mistyped_key_and_wrong_type_are_refused_by_the_config():
  config = mnist_configs.get_config("crvae")
  config.lock()
  with pytest.raises(AttributeError, match="num_epoch"):
    config.train.num_epoch = 3  # typo of num_epochs
  with pytest.raises(TypeError):
    config.model.num_blocks = "eight"
