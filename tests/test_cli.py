"""experiments/main.py: flags in, a trained workdir out (tiny data injected)."""

import os

import pytest

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
    assert mnist_configs.config_at_scale(row, "cpu") == cpu
    assert mnist_configs.config_at_scale(row, "paper") == paper
  with pytest.raises(ValueError, match="unknown scale 'gpu'"):
    mnist_configs.config_at_scale("crvae", "gpu")


def test_main_runs_train_evaluate_sample(cli_workdir):
  # The session fixture `cli_workdir` (conftest.py) runs experiments/main.py's `main`
  # with --mode=train,evaluate,sample on the tiny config and data (other tests read its
  # workdir too).
  workdir, config = cli_workdir
  assert os.path.exists(workdir / "samples" / "reconstructions.png")
  assert os.path.exists(workdir / f"eval_test_K{config.eval.num_samples}.json")
