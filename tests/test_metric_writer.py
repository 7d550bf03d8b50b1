"""metrics.jsonl: strict JSON on every line, and one record per (step, split) after a
resume that retrains steps an earlier run had already logged."""

import json
import os

import numpy as np

from crvae_jax.train.metrics import MetricWriter


def _strict_records(path):
  def refuse(constant):
    raise ValueError(f"not strict JSON: {constant}")
  with open(path, encoding="utf-8") as f:
    return [json.loads(line, parse_constant=refuse) for line in f]


def test_non_finite_values_are_written_as_null(tmp_path):
  writer = MetricWriter(str(tmp_path))
  flat = writer.write(5, {"loss": np.float32(np.nan), "kl": np.array([1.0, np.inf]),
                          "bound": -np.inf, "recon": 2.5})
  writer.close()
  assert np.isnan(flat["loss"])  # the caller still gets the values themselves
  (record,) = _strict_records(tmp_path / "metrics.jsonl")
  assert record == {"step": 5, "split": "train", "loss": None, "kl/0": 1.0, "kl/1": None,
                    "bound": None, "recon": 2.5}


def test_a_resumed_run_keeps_one_record_per_step(tmp_path):
  # The first run logs to step 30 and checkpoints at 20, then dies (its last line cut
  # short); the rerun resumes at 20 and logs 30 again.
  workdir = str(tmp_path)
  first = MetricWriter(workdir)
  for step in (10, 20, 30):
    first.write(step, {"loss": float(step)})
  first.write(20, {"elbo": -90.0}, prefix="valid")
  first.close()
  with open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8") as f:
    f.write('{"step": 40, "split": "tr')
  again = MetricWriter(workdir, resume_step=20)
  again.write(30, {"loss": 31.0})
  again.close()
  records = _strict_records(os.path.join(workdir, "metrics.jsonl"))
  keys = [(r["step"], r["split"]) for r in records]
  assert keys == [(10, "train"), (20, "train"), (20, "valid"), (30, "train")]
  assert records[-1]["loss"] == 31.0
  # Without resume_step nothing is dropped (a writer that only appends).
  MetricWriter(workdir).close()
  assert len(_strict_records(os.path.join(workdir, "metrics.jsonl"))) == 4
