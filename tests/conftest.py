"""Shared test set-up: two fake CPU devices, a tiny config and tiny random MNIST-like data."""

import contextlib
import os

# Must happen before jax is imported anywhere; a flag the caller set wins. Every test sees
# 2 CPU devices. The tests compile many programs and run each for milliseconds: skip
# LLVM's optimization passes, and emit fused loops with XLA's older elemental emitters
# instead of its MLIR fusion emitters (both compile much faster: docs/cpu_tuning.md; every
# test compares numbers computed under the same flags, or with a tolerance).
# Subprocesses (the multi-process and preemption tests) inherit them through the
# environment.
_xla_flags = os.environ.get("XLA_FLAGS", "")
for _flag in ("--xla_force_host_platform_device_count=2",
              "--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false"):
  if _flag.split("=")[0] not in _xla_flags:
    _xla_flags += " " + _flag
os.environ["XLA_FLAGS"] = _xla_flags.strip()

import numpy as np  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top

from experiments.configs import mnist as mnist_configs  # pylint: disable=g-import-not-at-top
from crvae_jax.families import mnist as mnist_family  # pylint: disable=g-import-not-at-top


def make_tiny_config(row: str = "crvae"):
  """A paper config shrunk to seconds: width 2, LSTM 16, latent 4x4x8, T=4, batch 8."""
  c = mnist_configs.get_config(row + ",cpu")
  c.model.width = 2
  c.model.lstm_hidden = 16
  c.model.latent_channels = 8
  c.model.num_blocks = 4
  c.model.top_dim = 6
  c.optim.lstm_lr_divisor = 4.0
  c.train.batch_size = 8
  c.train.num_epochs = 1.0
  c.train.log_every_steps = 2
  c.train.eval_every_epochs = 1.0
  c.train.sample_every_epochs = 1.0
  c.optim.halve_every_epochs = 1.0
  c.eval.num_samples = 6
  c.eval.report_k = 3
  c.eval.chunk_size = 4
  c.eval.batch_size = 6
  c.sample.num_images = 4
  return c


def make_tiny_data(num_train: int = 32, num_eval: int = 10, seed: int = 0):
  """MNIST-shaped random data: smooth blobs so that binarization is not all noise."""
  rng = np.random.default_rng(seed)
  def images(n):
    yy, xx = np.mgrid[:28, :28]
    cy, cx = rng.uniform(8, 20, (2, n, 1, 1))
    blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 30.0)
    return (255 * blob).astype(np.uint8)
  test = images(num_eval)
  binary = lambda a: (rng.uniform(size=a.shape) < a / 255.0).astype(np.uint8)
  return mnist_family.MnistData(images(num_train), binary(images(num_eval)), binary(test),
                                test, "tiny random blobs (test data)")


@pytest.fixture
def absl_logs(caplog):
  """The messages crvae_jax logs through absl (INFO and above) during a test."""
  import logging  # pylint: disable=g-import-not-at-top
  caplog.set_level(logging.INFO, logger="absl")
  return caplog


@pytest.fixture
def tiny_config():
  return make_tiny_config()


@pytest.fixture
def tiny_data():
  return make_tiny_data()


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
  """Reuse compiled executables across tests that build the same step (saves minutes)."""
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("xla_cache")))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@contextlib.contextmanager
def main_flags(config_arg, workdir, mode, config):
  """Parses experiments/main.py's command line, swaps in `config` for the parsed config
  and leaves the flags unparsed afterwards.

  Assign, never monkeypatch, absl's FLAGS: monkeypatch's undo after `unparse_flags()`
  deletes the flag (`--config` then becomes unknown to every later test).
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["main", f"--config={config_arg}", f"--workdir={workdir}", f"--mode={mode}"])
  flags.FLAGS.config = config
  try:
    yield flags.FLAGS
  finally:
    flags.FLAGS.unparse_flags()


@pytest.fixture(scope="session")
def cli_workdir(tmp_path_factory):
  """(workdir, config): experiments/main.py's `main` run once with
  --mode=train,evaluate,sample on the tiny config (1 epoch = 4 steps) and tiny data.

  Shared by tests/test_cli.py and tests/test_training.py (which resumes a copy of it);
  tests must not write into it.
  """
  from experiments import main as cli  # pylint: disable=g-import-not-at-top
  workdir = tmp_path_factory.mktemp("cli_run")
  config = make_tiny_config()
  with pytest.MonkeyPatch.context() as monkeypatch:
    monkeypatch.setattr(mnist_family, "load_data", lambda cfg: make_tiny_data())
    with main_flags("experiments/configs/mnist.py:crvae,cpu", workdir,
                    "train,evaluate,sample", config):
      cli.main(["main"])
  return workdir, config


# Test files that share a session fixture run on the same pytest-xdist worker.
_SHARED_GROUPS = {"test_training": "test_cli",  # these use `cli_workdir`
                  "test_notebook_api": "test_cli",
                  "test_estimator_gap": "test_cli"}


def pytest_collection_modifyitems(items):
  """One xdist group per test file (`--dist loadgroup`, pyproject.toml)."""
  for item in items:
    module = item.module.__name__.rsplit(".", 1)[-1]
    item.add_marker(pytest.mark.xdist_group(_SHARED_GROUPS.get(module, module)))


def two_data_parallel_train_steps(config):
  """(state, metrics) after two shard_map train steps of `config`'s MNIST model on the
  two CPU devices, from seed-0 parameters, on one fixed batch of 8 random images."""
  import jax  # pylint: disable=g-import-not-at-top
  from crvae_jax import sharding  # pylint: disable=g-import-not-at-top
  from crvae_jax.train import mnist_step  # pylint: disable=g-import-not-at-top
  mesh = sharding.make_mesh(2)
  model = mnist_family.build_model(config)
  tx = mnist_family.build_optimizer(config, 1000)
  state = sharding.replicate(mesh, mnist_family.init_state(model, tx, 0))
  step = mnist_step.make_train_step(
      model, tx, mnist_step.make_objective(config.objective, config.model.num_blocks),
      mesh, num_samples=1)
  images = np.random.default_rng(0).integers(0, 256, (8, 28, 28), dtype=np.uint8)
  for _ in range(2):
    state, metrics = step(state, sharding.shard_batch(mesh, images), jax.random.key(0))
  return state, metrics
