"""experiments/rgb_summary.write_summary: what it reads from metrics.jsonl and the note."""

import json

from experiments import rgb_summary


def _metrics(workdir, rates):
  rows = [{"step": 100 * (i + 1), "split": "train", "examples_per_s": r,
           "d_update_skipped": 0.5 * (i % 2), "loss_g": 0.1, "loss_d": 0.5,
           "d_accuracy": 0.75, "recon_mse": 0.04} for i, r in enumerate(rates)]
  rows.insert(1, {"step": 100, "split": "valid", "examples_per_s": 1e6})
  with open(workdir / "metrics.jsonl", "w", encoding="utf-8") as f:
    f.write("\n".join(json.dumps(r) for r in rows) + "\n")


def test_summary_reads_the_run_and_carries_the_note(tmp_path):
  # The first interval (compilation) and the valid rows are left out of the median.
  _metrics(tmp_path, [5.0, 100.0, 120.0, 130.0])
  path = rgb_summary.write_summary("emoji_crvaegan", str(tmp_path), str(tmp_path), 600.0,
                                invocations=2, note="trained by experiments.main at abc")
  text = open(path, encoding="utf-8").read()
  assert "| 400 steps x batch 32 | 10.0 min | 120.0 | 25.0% |" in text
  assert "over the run's 2 invocation(s)" in text
  assert "Note: trained by experiments.main at abc" in text


def test_summary_without_a_note_has_no_note_line(tmp_path):
  _metrics(tmp_path, [5.0, 100.0])
  path = rgb_summary.write_summary("emoji_vaegan", str(tmp_path), str(tmp_path), 60.0)
  assert "Note:" not in open(path, encoding="utf-8").read()
