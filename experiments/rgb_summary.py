"""The summary.md of a CPU-scale RGB Stage1 run (experiments/rgb_demo.py writes it into
results/ROW_cpu/): command, date, machine, commit, budget, throughput, the fraction of
gated discriminator updates and the last losses, all read from the run's metrics.jsonl.
No flags here, so tests import it beside the other entry points."""

import datetime
import json
import os

import numpy as np

from experiments.configs import rgb as rgb_configs
from experiments.provenance import cpu_description, emoji_data_line, git_commit


def throughput(workdir: str) -> dict:
  """From metrics.jsonl: images/s (median over logged intervals, the first one, which
  includes compilation, left out), the fraction of gated D updates, the last losses."""
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [r for r in map(json.loads, f) if r["split"] == "train"]
  rates = [r["examples_per_s"] for r in rows[1:]] or [rows[0]["examples_per_s"]]
  return {"steps": rows[-1]["step"], "images_per_s": float(np.median(rates)),
          "gated": float(np.mean([r["d_update_skipped"] for r in rows])),
          "last": rows[-1]}


def write_summary(row: str, workdir: str, out_dir: str, seconds: float,
                  invocations: int = 1, note: str = "") -> str:
  config = rgb_configs.get_config(row + ",cpu")
  t = dict(throughput(workdir), invocations=invocations)
  last = t["last"]
  m = config.model
  lines = [
      f"# {row}, CPU scale", "",
      f"Command: `python -m experiments.rgb_demo --rows={row}` (trains "
      f"`experiments/configs/rgb.py:{row},cpu`)  ",
      f"Date: {datetime.date.today().isoformat()}  ",
      f"Machine: {cpu_description()}, "
      f"CPU only, 1 device  ",
      f"Commit: {git_commit()}", "",
      f"Data: {emoji_data_line(config)}, random horizontal flips. Drawings, not photographs: "
      "this checks that the model trains; it is not the paper's experiment.", "",
      f"Model: {m.variant}, width {m.width}, latent 4x4x{m.latent_channels} "
      f"(T={m.num_blocks}), LSTM {m.lstm_hidden}; weights alpha1 "
      f"{config.objective.alpha1}, alpha2 {config.objective.alpha2}, beta "
      f"{config.objective.beta}, kappa {config.objective.kappa}; lr "
      f"{config.optim.learning_rate}.", "",
      "| budget | wall time | images/s (median) | D updates gated | last loss_g | last "
      "loss_d | last D accuracy | last recon MSE |",
      "|---|---|---|---|---|---|---|---|",
      f"| {t['steps']} steps x batch {config.train.batch_size} | {seconds / 60:.1f} min | "
      f"{t['images_per_s']:.1f} | {100 * t['gated']:.1f}% | {last['loss_g']:.4f} | "
      f"{last['loss_d']:.4f} | {last['d_accuracy']:.3f} | {last['recon_mse']:.4f} |", "",
      f"The wall time is summed over the run's {t['invocations']} invocation(s) (it was "
      "resumed across sessions if more than one) and includes compilation and the grids; "
      "the machine may have been running other jobs (see the note of the stop that "
      "committed this).", "",
      *([f"Note: {note}", ""] if note else []),
      "![prior samples](prior.png)", "",
      "Prior samples (z ~ N(0, I)), BatchNorm with running averages.", "",
      "![reconstructions](reconstructions.png)", "",
      "Training images (left of each pair) and reconstructions from the posterior mean.",
  ]
  path = os.path.join(out_dir, "summary.md")
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  return path
