"""The kernels a run computes with: conv_impl 'fastest' (the configs' default) picks
oneDNN's convolutions where they build, else the 'cpu' kernels, saying why; a training
run's config.json records what it picked, and a workdir keeps the kernels it started
with (`checkpoints.settle_kernels`), so that older runs resume bit for bit."""

import json
import logging

import jax
import pytest

from crvae_jax import config_checks, families
from crvae_jax.models import layers, onednn_conv
from crvae_jax.train import checkpoints
from experiments.configs import mnist as mnist_configs
from experiments.configs import rgb as rgb_configs


@pytest.fixture
def no_onednn(monkeypatch):
  """This process as on a machine where oneDNN's library cannot be built."""
  monkeypatch.setattr(onednn_conv, "_find_onednn", lambda: None)
  monkeypatch.setattr(layers, "_WARNED", set())  # each test sees its warning
  onednn_conv.load.cache_clear()
  onednn_conv.unavailable_reason.cache_clear()
  yield
  onednn_conv.load.cache_clear()
  onednn_conv.unavailable_reason.cache_clear()


def test_configs_default_to_the_fastest_kernels():
  for config in (mnist_configs.get_config("crvae,cpu"), rgb_configs.get_config(
      "emoji_crvaegan,cpu")):
    assert config.model.conv_impl == "fastest" and config.model.fused_backward


def test_fastest_is_onednn_where_it_builds():
  reason = onednn_conv.unavailable_reason()
  expected = "onednn" if reason is None else "cpu"
  assert jax.default_backend() == "cpu"
  assert layers.resolve_conv_impl("fastest") == expected, reason


def test_fastest_falls_back_to_the_cpu_kernels_and_says_why(no_onednn, caplog):
  with caplog.at_level(logging.WARNING, logger="absl"):
    assert layers.resolve_conv_impl("fastest") == "cpu"
  assert "conv_impl='fastest' runs conv_impl 'cpu' here" in caplog.text
  assert "requirements.txt" in caplog.text  # the reason: the wheels are missing


def test_a_new_run_records_what_fastest_picked(tmp_path, tiny_config, caplog):
  tiny_config.model.conv_impl = "fastest"
  checkpoints.settle_kernels(str(tmp_path / "new"), tiny_config)
  picked = layers.resolve_conv_impl("fastest")
  assert tiny_config.model.conv_impl == picked
  # write_config resolves it too (library callers that do not settle first), and a
  # config asking for 'fastest' again is the same run.
  tiny_config.model.conv_impl = "fastest"
  checkpoints.write_config(str(tmp_path), tiny_config)
  saved = checkpoints.read_config_json(str(tmp_path))
  assert saved["model"]["conv_impl"] == picked
  assert checkpoints.config_differences(saved, tiny_config) == []
  # Resumed with the same default: the same kernels, and nothing to say about them.
  with caplog.at_level(logging.INFO, logger="absl"):
    checkpoints.settle_kernels(str(tmp_path), tiny_config)
  assert tiny_config.model.conv_impl == picked
  assert "started with" not in caplog.text


def test_a_workdir_keeps_the_kernels_it_started_with(tmp_path, tiny_config, caplog):
  tiny_config.model.conv_impl, tiny_config.model.fused_backward = "auto", False
  checkpoints.write_config(str(tmp_path), tiny_config)
  # Resumed with today's defaults: the run goes on with 'auto' and autodiff's backward.
  tiny_config.model.conv_impl, tiny_config.model.fused_backward = "fastest", True
  with caplog.at_level(logging.INFO, logger="absl"):
    checkpoints.settle_kernels(str(tmp_path), tiny_config)
  assert (tiny_config.model.conv_impl, tiny_config.model.fused_backward) == ("auto", False)
  assert "the kernels its run started with" in caplog.text
  assert checkpoints.config_differences(checkpoints.read_config_json(str(tmp_path)),
                                        tiny_config) == []
  # A config.json written before fused_backward existed: the run had autodiff's.
  saved = checkpoints.read_config_json(str(tmp_path))
  del saved["model"]["fused_backward"]
  (tmp_path / "config.json").write_text(json.dumps(saved))
  tiny_config.model.fused_backward = True
  checkpoints.settle_kernels(str(tmp_path), tiny_config)
  assert tiny_config.model.fused_backward is False


def test_fastest_is_xla_off_the_cpu(monkeypatch):
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert layers.resolve_conv_impl("fastest") == "xla"


def test_a_locked_config_takes_the_workdir_kernels(tmp_path, tiny_config):
  # experiments.main's --config is locked (no new keys); settling sets existing ones.
  tiny_config.model.conv_impl, tiny_config.model.fused_backward = "cpu", False
  checkpoints.write_config(str(tmp_path), tiny_config)
  tiny_config.model.conv_impl, tiny_config.model.fused_backward = "fastest", True
  tiny_config.lock()
  checkpoints.settle_kernels(str(tmp_path), tiny_config)
  assert (tiny_config.model.conv_impl, tiny_config.model.fused_backward) == ("cpu", False)


def test_resume_other_config_takes_the_config_kernels(tmp_path, tiny_config):
  tiny_config.model.conv_impl = "cpu"
  checkpoints.write_config(str(tmp_path), tiny_config)
  tiny_config.model.conv_impl, tiny_config.train.resume_other_config = "xla", True
  checkpoints.settle_kernels(str(tmp_path), tiny_config)
  assert tiny_config.model.conv_impl == "xla"
  # (reading the run is not resuming it: the workdir's kernels)
  checkpoints.settle_kernels(str(tmp_path), tiny_config, training=False)
  assert tiny_config.model.conv_impl == "cpu"


def test_a_onednn_run_where_onednn_cannot_run(tmp_path, tiny_config, no_onednn, caplog):
  saved = json.loads(tiny_config.to_json_best_effort())
  saved["model"]["conv_impl"] = "onednn"  # trained on a machine with oneDNN
  (tmp_path / "config.json").write_text(json.dumps(saved))
  # Training on would change the kernels mid-run: refused, naming the file and a way on.
  with pytest.raises(config_checks.ConfigError,
                     match=r"config.json: its run computes with model.conv_impl='onednn', "
                           r"which cannot run here.*resume_other_config"):
    checkpoints.settle_kernels(str(tmp_path), tiny_config)
  # Evaluating, sampling or restoring it: the kernels of this machine, with a warning.
  with caplog.at_level(logging.WARNING, logger="absl"):
    checkpoints.settle_kernels(str(tmp_path), tiny_config, training=False)
    assert tiny_config.model.conv_impl == "cpu"
    assert families.saved_config(str(tmp_path)).model.conv_impl == "cpu"
  assert "cannot run here" in caplog.text and "reading the run with conv_impl 'cpu'" \
      in caplog.text
