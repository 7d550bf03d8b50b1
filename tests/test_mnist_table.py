"""experiments/mnist_table.py's report: rows, controls and paired differences are read
from the per-row result files, never typed."""

import json
import os
import sys

from absl.testing import flagsaver
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from crvae_jax import evaluate, likelihood  # pylint: disable=g-import-not-at-top
from experiments import mnist_table


@pytest.fixture(name="flags")
def _flags():
  # Other test modules define required flags of their own (experiments/main.py), so set
  # values directly instead of parsing a command line; flagsaver restores them.
  flags = mnist_table.FLAGS
  if not flags.is_parsed():
    flags.mark_as_parsed()
  with flagsaver.flagsaver(note="synthetic rows", scale="cpu"):
    yield flags


def _write_row(root, row, nll, lr, commit="abc1234"):
  workdir = os.path.join(root, row)
  os.makedirs(workdir)
  np.save(evaluate.per_image_path(workdir, 20), nll)
  record = {"row": row, "label": mnist_table.row_label(row),
            "paper_nll": None if row in mnist_table.CONTROLS else 80.0,
            "params": 1.5e6, "valid_elbo": -140.0, "train_seconds_this_run": 600.0,
            "eval_seconds": 200.0, "commit": commit, "machine": "test machine",
            "epochs": 2.0, "batch_size": 128, "width": 8, "lstm_hidden": 128,
            "learning_rate": lr,
            "eval": {"nll": float(nll.mean()), "nll_stderr": 0.3, "neg_elbo": 150.0,
                     "num_samples": 20, "seed": 0, "num_images": len(nll),
                     "test_set": "synthetic", "date": "2026-11-28 00:00 UTC"}}
  with open(os.path.join(workdir, "table_row.json"), "w", encoding="utf-8") as f:
    json.dump(record, f)


def test_table_pairs_rows_and_controls_by_image(tmp_path, flags):
  del flags
  rng = np.random.default_rng(0)
  vae = 130 + rng.normal(size=500)
  crvae = vae - 5 + 0.1 * rng.normal(size=500)
  vae_fast = vae - 8 + 0.1 * rng.normal(size=500)
  root = str(tmp_path)
  _write_row(root, "vae", vae, 3e-4)
  _write_row(root, "crvae", crvae, 3e-3)
  _write_row(root, "vae_lr3e-3", vae_fast, 3e-3)
  out = str(tmp_path / "table.md")
  mnist_table.write_table(root, mnist_table.load_finished(root), out)
  text = open(out, encoding="utf-8").read()

  def paired(a, b):
    return "{:+.2f} +- {:.2f}".format(*likelihood.mean_and_stderr(a - b))

  crvae_line = next(l for l in text.splitlines() if l.startswith("| crVAE (T=8) |"))
  assert paired(crvae, vae) in crvae_line
  control_line = next(l for l in text.splitlines() if l.startswith("| VAE at lr 3e-3"))
  assert "| - |" in control_line and paired(vae_fast, vae) in control_line
  assert f"(both lr 0.003): {paired(crvae, vae_fast)} nats" in text
  assert "| cVAE | 83.12 | not run" in text  # unfinished rows are listed, not dropped
  assert "Note: synthetic rows" in text
