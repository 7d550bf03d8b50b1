r"""The paper's Table 1 (MNIST NLL of every crVAE-family row), trained and scored here.

  python experiments/mnist_table.py                       # every row, CPU scale
  python experiments/mnist_table.py --rows=vae,crvae      # some rows
  nohup python experiments/mnist_table.py --rows=criwa > criwa.log 2>&1 &   # background
  python experiments/mnist_table.py --report_only         # rewrite the table only

Each row trains `experiments/configs/mnist.py:ROW[,cpu]` in <root>/<ROW>, scores all test
images with the importance-sampled NLL (`crvae_jax.likelihood`) and writes
<root>/<ROW>/table_row.json. Rows with that file are not re-run; a row killed mid-way
resumes from its last checkpoint. After each row the markdown table is rewritten
(default results/mnist_table.md) with every finished row: our NLL, the paper's, the
protocol, and a paired comparison against the VAE row (per-image NLL differences).

Every row gets the same budget: the same epochs, batch, learning-rate schedule and K.
--scale=paper runs the paper's configs (200 epochs, K=10,000; needs a GPU).
"""

import json
import os
import platform
import sys
import time

from absl import app, flags, logging
import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from crvae_jax import config_checks, evaluate, host_memory, likelihood  # pylint: disable=g-import-not-at-top
from crvae_jax.train import loop, parallel, setup
from experiments.configs import mnist as mnist_configs
from experiments.provenance import git_commit

TABLE_ORDER = ("vae", "cvae", "crvae_inference", "crvae_generation", "crvae_t4", "crvae",
               "crvae_t16", "criwa", "crvae_2layer")
ROW_LABELS = {"vae": "VAE", "cvae": "cVAE", "crvae_inference": "crVAE@inference",
              "crvae_generation": "crVAE@generation", "crvae_t4": "crVAE (T=4)",
              "crvae": "crVAE (T=8)", "crvae_t16": "crVAE (T=16)",
              "criwa": "crIWA (T=8, k=5)", "crvae_2layer": "crVAE, 2 stochastic layers"}
# Controls (not rows of the paper): a row's config with one change, to separate what the
# model does from what its recipe does. The release trains VAE/cVAE at lr 3e-4 and the
# crVAE family at 3e-3; these swap the learning rates of the two key rows.
CONTROLS = {
    "vae_lr3e-3": ("vae", "VAE at lr 3e-3 (control)", {"learning_rate": 3e-3}),
    "crvae_lr3e-4": ("crvae", "crVAE (T=8) at lr 3e-4 (control)", {"learning_rate": 3e-4}),
    "crvae_lstm_full_lr": ("crvae", "crVAE (T=8), LSTMs at lr 3e-3, not lr/T (control)",
                           {"lstm_lr_divisor": 1.0}),
}
# Paired comparisons at equal learning rate: (row, reference row).
SAME_LR_PAIRS = (("crvae_lr3e-4", "vae"), ("crvae", "vae_lr3e-3"),
                 ("crvae_lstm_full_lr", "vae_lr3e-3"))
# Default run order: the comparison that matters first, the slowest row (k=5) last.
RUN_ORDER = ("vae", "crvae", "cvae", "crvae_inference", "crvae_generation", "crvae_t4",
             "crvae_t16", "crvae_2layer", "criwa")

FLAGS = flags.FLAGS
flags.DEFINE_list("rows", list(RUN_ORDER), "Rows to train and score, from "
                  f"{TABLE_ORDER} and the controls {tuple(CONTROLS)}.")
flags.DEFINE_enum("scale", "cpu", ["cpu", "paper"], "Config scale of every row.")
flags.DEFINE_string("root", None, "Workdir root; default runs/mnist_table_<scale>.")
flags.DEFINE_string("output", None, "Markdown table; default results/mnist_table[_paper].md.")
flags.DEFINE_float("num_epochs", None, "Epochs per row (default: the config's).")
flags.DEFINE_integer("num_samples", None, "Importance samples K (default: the config's).")
flags.DEFINE_bool("report_only", False, "Only rewrite the table from finished rows.")
flags.DEFINE_string("note", "", "A line added to the table's protocol (e.g. how the rows "
                    "shared the machine).")


def row_config(row: str):
  """The row's config (a control: its base row's config with the control's changes)."""
  base, _, optim_changes = CONTROLS.get(row, (row, None, {}))
  config = mnist_configs.config_at_scale(base, FLAGS.scale)
  for key, value in optim_changes.items():
    config.optim[key] = value
  if FLAGS.num_epochs is not None:
    config.train.num_epochs = FLAGS.num_epochs
  if FLAGS.num_samples is not None:
    config.eval.num_samples = FLAGS.num_samples
  return config


def row_label(row: str) -> str:
  return CONTROLS[row][1] if row in CONTROLS else ROW_LABELS[row]


def run_row(row: str, root: str, data, commit: str) -> dict:
  """Train (or resume) and score one row; returns and writes its table_row.json."""
  config = row_config(row)
  workdir = os.path.join(root, row)
  print(f"\n=== {row_label(row)} -> {workdir}", flush=True)
  t0 = time.time()
  valid = loop.train_and_evaluate(config, workdir, data=data)
  t1 = time.time()
  summary = evaluate.evaluate(config, workdir, data=data)
  t2 = time.time()
  n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(
      setup.init_variables(setup.build_model(config), config.train.seed)["params"]))
  record = {
      "row": row, "label": row_label(row),
      "paper_nll": None if row in CONTROLS else config.paper_nll,
      "variant": config.model.variant, "num_blocks": config.model.num_blocks,
      "objective": config.objective.kind, "objective_samples": config.objective.num_samples,
      "beta": config.objective.beta, "width": config.model.width,
      "lstm_hidden": config.model.lstm_hidden, "params": n_params,
      "epochs": config.train.num_epochs, "batch_size": config.train.batch_size,
      "learning_rate": config.optim.learning_rate,
      "valid_elbo": valid.get("elbo"), "train_seconds_this_run": t1 - t0,
      "eval_seconds": t2 - t1, "commit": commit,
      "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                 f"{summary['devices']}, jax {jax.__version__}",
      "eval": summary,
  }
  with open(os.path.join(workdir, "table_row.json"), "w", encoding="utf-8") as f:
    json.dump(record, f, indent=2)
  return record


def load_finished(root: str) -> dict:
  out = {}
  for row in TABLE_ORDER + tuple(CONTROLS):
    path = os.path.join(root, row, "table_row.json")
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        out[row] = json.load(f)
  return out


def per_image_nll(root: str, record: dict) -> np.ndarray:
  k = record["eval"]["num_samples"]
  return np.load(evaluate.per_image_path(os.path.join(root, record["row"]), k))


def paired_difference(root: str, record: dict, reference: dict) -> str:
  """Mean +- se over test images of NLL(record) - NLL(reference)."""
  diff = per_image_nll(root, record) - per_image_nll(root, reference)
  mean, se = likelihood.mean_and_stderr(diff)
  return f"{mean:+.2f} +- {se:.2f}"


def write_table(root: str, finished: dict, output: str) -> None:
  """results markdown: one line per finished row, in the paper's order."""
  if not finished:
    return
  base = finished.get("vae")
  any_rec = next(iter(finished.values()))
  ev = any_rec["eval"]
  lines = [
      f"# Table 1 (MNIST NLL), {FLAGS.scale.upper()} scale",
      "",
      "Written by `experiments/mnist_table.py` (command below); every number is read from",
      f"the per-row results under `{root}/`. NLL in nats, lower is better; +- is the",
      "standard error over test images.",
      "",
      f"- Command: `python experiments/mnist_table.py --scale={FLAGS.scale}"
      + (f" --num_epochs={FLAGS.num_epochs:g}" if FLAGS.num_epochs is not None else "")
      + (f" --num_samples={FLAGS.num_samples}" if FLAGS.num_samples is not None else "")
      + "` (rows run one after another; any subset with `--rows`)",
      f"- Test set: {ev['test_set']} ({ev['num_images']} images, every one scored); "
      f"importance samples K = {ev['num_samples']} per image (seed {ev['seed']}), BN in "
      "inference mode, the best-validation-ELBO checkpoint.",
      f"- Budget, equal for every row: {any_rec['epochs']:g} epochs of batch "
      f"{any_rec['batch_size']} (50,000 training images, dynamic binarization), width "
      f"{any_rec['width']}, LSTM hidden {any_rec['lstm_hidden']}; learning rates as the "
      "release (VAE/cVAE 3e-4, crVAE family 3e-3, LSTMs at lr/T).",
  ]
  if FLAGS.note:
    lines.append(f"- Note: {FLAGS.note}")
  if FLAGS.scale == "cpu":
    lines.append("- **CPU scale**: small models trained for minutes; not comparable with "
                 "the paper's numbers (200 epochs, width 32, LSTM 512, K=10,000, "
                 "Larochelle's binarized test set), which are listed for reference.")
  lines += [
      "",
      "| model | paper NLL | our NLL | our -ELBO | vs VAE (paired) | valid ELBO | params "
      "| train s | eval s | date | commit |",
      "|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for row in TABLE_ORDER + tuple(CONTROLS):
    if row not in finished:
      if row in TABLE_ORDER:
        lines.append(f"| {ROW_LABELS[row]} | {mnist_configs.PAPER_NLL[row]:.2f} | not run "
                     "| | | | | | | | |")
      continue
    r, e = finished[row], finished[row]["eval"]
    if base is not None and row != "vae":
      paired = paired_difference(root, r, base)
    else:
      paired = "reference" if row == "vae" else "(no VAE row)"
    paper = "-" if r["paper_nll"] is None else f"{r['paper_nll']:.2f}"
    lines.append(
        f"| {r['label']} | {paper} | {e['nll']:.2f} +- {e['nll_stderr']:.2f} "
        f"| {e['neg_elbo']:.2f} | {paired} | {r['valid_elbo']:.2f} | "
        f"{r['params'] / 1e6:.2f} M | {r['train_seconds_this_run']:.0f} | "
        f"{r['eval_seconds']:.0f} | {e['date']} | {r['commit']} |")
  pairs = [(a, b) for a, b in SAME_LR_PAIRS if a in finished and b in finished]
  if pairs:
    lines += ["", "Controls at equal learning rate (paired, per image; negative: the first "
              "model is better):", ""]
    lines += [f"- {finished[a]['label']} - {finished[b]['label']} (both lr "
              f"{finished[a]['learning_rate']:g}): "
              f"{paired_difference(root, finished[a], finished[b])} nats"
              for a, b in pairs]
  lines += [
      "",
      "\"vs VAE (paired)\": mean over test images of NLL(row) - NLL(VAE) on the same "
      "images, with its standard error; negative means the row beats the VAE.",
      "\"train s\" is the wall time of the run that finished the row (a resumed row "
      "counts only its last part); the machine: " + any_rec["machine"] + ".",
      "",
  ]
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  with open(output, "w", encoding="utf-8") as f:
    f.write("\n".join(lines))
  print(f"wrote {output}", flush=True)


def main(argv):
  logging.set_verbosity(logging.WARNING)
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  unknown = [r for r in FLAGS.rows if r not in TABLE_ORDER and r not in CONTROLS]
  if unknown:
    raise app.UsageError(f"--rows: unknown {unknown}; choose from {TABLE_ORDER} or the "
                         f"controls {tuple(CONTROLS)}")
  root = FLAGS.root or f"runs/mnist_table_{FLAGS.scale}"
  output = FLAGS.output or ("results/mnist_table.md" if FLAGS.scale == "cpu"
                            else "results/mnist_table_paper.md")
  todo = [r for r in FLAGS.rows
          if not os.path.exists(os.path.join(root, r, "table_row.json"))]
  if not FLAGS.report_only and todo:
    configs = [row_config(r) for r in todo]
    mesh_size = parallel.make_mesh(configs[0].train.num_devices).size
    for config in configs:  # every row's config is checked before anything trains
      config_checks.check_mnist_config(config, mesh_size)
    commit = git_commit()  # the code this process runs (read once, at start)
    print(f"rows to run: {todo}; finished rows are kept; code {commit}", flush=True)
    data = setup.load_data(configs[0])
    for row in todo:
      run_row(row, root, data, commit)
      write_table(root, load_finished(root), output)
  write_table(root, load_finished(root), output)


if __name__ == "__main__":
  host_memory.reexec_with_hugepages()
  app.run(main)
