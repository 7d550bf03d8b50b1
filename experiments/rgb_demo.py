r"""The CPU-scale 64x64 demo: train VAE-GAN / crVAE-GAN on the emoji set, commit the grids.

  python -m experiments.rgb_demo                         # both models, CPU scale
  python -m experiments.rgb_demo --rows=emoji_crvaegan   # one

Each row trains `experiments/configs/rgb.py:ROW,cpu` in runs/ROW_cpu (an interrupted row
resumes; a finished one is not retrained), writes its grids, then copies the final
prior-sample and reconstruction grids to results/ROW_cpu/ with summary.md: the command,
date, machine, commit, budget, throughput and the fraction of gated discriminator updates,
all read from the run's own metrics.jsonl (experiments/rgb_summary.py).
"""

import json
import os
import shutil

from absl import app, flags

from crvae_jax import host_memory
from crvae_jax.families import stage1
from crvae_jax.train import checkpoints
from experiments.configs import rgb as rgb_configs
from experiments.rgb_summary import write_summary

FLAGS = flags.FLAGS
flags.DEFINE_list("rows", ["emoji_vaegan", "emoji_crvaegan"], "RGB config rows to train.")
flags.DEFINE_string("runs_dir", "runs", "Where the workdirs go.")
flags.DEFINE_string("results_dir", "results", "Where the grids and summaries go.")
flags.DEFINE_string("note", "", "A paragraph added to each summary (e.g. that a run was "
                    "trained elsewhere, by which command and commit, beside what).")


def main(argv):
  del argv
  for row in FLAGS.rows:
    config = rgb_configs.get_config(row + ",cpu")
    workdir = os.path.join(FLAGS.runs_dir, f"{row}_cpu")
    checkpoints.settle_kernels(workdir, config)  # a started run keeps its kernels
    summary_file = os.path.join(workdir, "train_summary.json")
    if not os.path.exists(summary_file):
      stage1.train(config, workdir)
    with open(summary_file, encoding="utf-8") as f:
      summary = json.load(f)
    seconds, invocations = summary["train_seconds"], summary.get("invocations", 1)
    prior, recon = stage1.sample(config, workdir)
    out_dir = os.path.join(FLAGS.results_dir, f"{row}_cpu")
    os.makedirs(out_dir, exist_ok=True)
    shutil.copyfile(prior, os.path.join(out_dir, "prior.png"))
    shutil.copyfile(recon, os.path.join(out_dir, "reconstructions.png"))
    summary_md = write_summary(row, workdir, out_dir, seconds, invocations, FLAGS.note)
    print(f"{row}: {summary_md}")


if __name__ == "__main__":
  host_memory.reexec_with_hugepages()
  app.run(main)
