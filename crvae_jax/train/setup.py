"""Everything a run builds from its config: data, model, optimizer, initial state."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from crvae_jax import data as mnist_data
from crvae_jax.models.mnist import MnistVAE
from crvae_jax.train import optimizer
from crvae_jax.train.parallel import BATCH_AXIS, TrainState


class MnistData(NamedTuple):
  train_images: np.ndarray  # [N, 28, 28] uint8 intensities (binarized per batch)
  valid_binary: np.ndarray  # [10000, 28, 28] uint8 {0, 1}
  test_binary: np.ndarray  # [10000, 28, 28] uint8 {0, 1}
  test_images: np.ndarray  # [10000, 28, 28] uint8 intensities (for pictures)
  test_set: str  # which binarized test set, in words


def load_data(config, log=print) -> MnistData:
  """MNIST splits and the statically binarized validation/test sets (config.data)."""
  d = config.data
  files = mnist_data.locate_mnist_files(
      d.mnist_dir or None, d.cache_dir or None, allow_download=d.allow_download, log=log)
  splits = mnist_data.load_mnist(files, num_valid=d.num_valid)
  return from_splits(splits, config)


def from_splits(splits, config) -> MnistData:
  d = config.data
  valid, test, description = mnist_data.load_eval_sets(
      splits, test_set=d.test_set, larochelle_dir=d.larochelle_dir or None)
  return MnistData(splits.train.images, valid, test, splits.test.images, description)


def build_model(config) -> MnistVAE:
  m = config.model
  return MnistVAE(variant=m.variant, num_blocks=m.num_blocks, width=m.width,
                  lstm_hidden=m.lstm_hidden, latent_channels=m.latent_channels,
                  top_dim=m.top_dim, conv_impl=m.conv_impl, bn_axis_name=BATCH_AXIS)


def steps_per_epoch(config, num_train: int) -> int:
  return max(1, num_train // config.train.batch_size)


def build_optimizer(config, num_train: int):
  o = config.optim
  return optimizer.make_optimizer(
      learning_rate=o.learning_rate, lstm_lr_divisor=o.lstm_lr_divisor,
      lstm_grad_clip=o.lstm_grad_clip,
      halve_every_steps=int(round(o.halve_every_epochs * steps_per_epoch(config,
                                                                         num_train))),
      b1=o.b1, b2=o.b2, eps=o.eps)


def init_variables(model: MnistVAE, seed: int):
  """Parameters and BN statistics, initialised under jit (fast; no eager tracing)."""
  x = jnp.zeros((1, 28, 28, 1))
  eps1 = jnp.zeros((1, 1) + model.latent_shape)
  eps2 = jnp.zeros((1, 1, model.top_dim))
  return jax.jit(model.init)(jax.random.key(seed), x, eps1, eps2)


def init_state(model: MnistVAE, tx, seed: int) -> TrainState:
  variables = init_variables(model, seed)
  params = variables["params"]
  return TrainState(jnp.int32(0), params, variables["batch_stats"], jax.jit(tx.init)(params))

