"""experiments/main.py: flags in, a trained workdir out (tiny data injected)."""

import os

import pytest
from absl import flags

from conftest import make_tiny_config, make_tiny_data
from crvae_jax.train import setup
from experiments import main as cli
from experiments.configs import mnist as mnist_configs


def test_unknown_config_row_names_the_choices():
  with pytest.raises(ValueError, match="unknown MNIST config row 'crvea'.*crvae"):
    mnist_configs.get_config("crvea")
  with pytest.raises(ValueError, match="modifier"):
    mnist_configs.get_config("crvae,gpu")


def test_every_table_row_has_a_paper_and_a_cpu_config():
  for row in mnist_configs.ROWS:
    paper, cpu = mnist_configs.get_config(row), mnist_configs.get_config(row + ",cpu")
    assert paper.model.width == 32 and paper.model.lstm_hidden == 512
    assert paper.train.num_epochs == 200 and paper.eval.num_samples == 10_000
    assert cpu.model.width < paper.model.width and cpu.scale == "cpu"
    assert paper.optim.lstm_lr_divisor == paper.model.num_blocks


def test_main_runs_train_evaluate_sample(tmp_path, monkeypatch):
  config = make_tiny_config()
  monkeypatch.setattr(setup, "load_data", lambda cfg, log=print: make_tiny_data())
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["main", "--config=experiments/configs/mnist.py:crvae,cpu",
               f"--workdir={tmp_path}", "--mode=train,evaluate,sample"])
  monkeypatch.setattr(flags.FLAGS, "config", config)
  cli.main(["main"])
  assert os.path.exists(tmp_path / "samples" / "reconstructions.png")
  assert os.path.exists(tmp_path / f"eval_test_K{config.eval.num_samples}.json")
  flags.FLAGS.unparse_flags()
