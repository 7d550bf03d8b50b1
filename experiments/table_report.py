"""results/mnist_table.md and its PNGs, from the Table 1 experiment's finished work.

Every number is read from the workdirs of `experiments/table_protocol.py` (job.json,
metrics.jsonl, evaluate's JSON and per-image arrays; for a lost workdir, its copied
records: `experiments/table_records.py`) and from the pilot learning curves;
unfinished parts are listed as pending. `experiments/mnist_table.py --stage=report`
calls `write_report`.
"""

import dataclasses
import os
import time

import numpy as np

from crvae_jax import stats
from crvae_jax.families import mnist as mnist_family
from experiments import table_choices, table_plots, table_stats
from experiments import table_protocol as tp
from experiments.configs import mnist as mnist_configs
from experiments.provenance import REPO


@dataclasses.dataclass
class Entry:
  """One line of a table: a row at one setting, over its seeds."""
  key: str
  row: str
  settings: list  # planned Setting per seed (None: waits for the grid)
  nll: dict = dataclasses.field(default_factory=dict)  # seed -> per-image NLL [N]
  summary: dict = dataclasses.field(default_factory=dict)  # seed -> evaluate's JSON
  record: dict = dataclasses.field(default_factory=dict)  # seed -> job.json

  @property
  def setting(self):
    return self.settings[0]

  @property
  def label(self) -> str:
    if self.row == "crvae" and not self.key.startswith("rel"):
      if self.setting is None:
        return "crVAE (T=8)" + (", other LSTM rate" if self.key == tp.OTHER_LSTM else "")
      return f"crVAE (T=8), LSTMs at {tp.LSTM_LABELS[self.setting.lstm]}"
    return tp.ROW_LABELS[self.row]


def eval_json(wd: str, num_samples: int, num_images=None) -> dict:
  return tp.read_json(os.path.join(tp.eval_dir(wd, num_images),
                                   f"eval_test_K{num_samples}.json"), ("nll",))


def per_image(wd: str, num_samples: int, name: str = "nll", num_images=None):
  path = mnist_family.per_image_path(tp.eval_dir(wd, num_images), num_samples, name)
  try:
    return np.load(path)
  except (OSError, ValueError) as e:
    raise tp.RecordError(f"{os.path.realpath(path)}, which its evaluation's summary says "
                         f"was written, cannot be read ({e})") from e


def collect(p: tp.Protocol, root: str) -> dict:
  """{entry key: Entry} of every trained entry of the plan, with its finished evals (the
  scoring eval of each entry's seed: the plan's eval job that follows its training)."""
  entries, scoring = {}, {}
  for job in tp.plan(p, root):
    if job.stage == "train":
      entries.setdefault(job.entry, Entry(job.entry, job.row, [])).settings.append(
          job.setting)
    elif job.entry in entries and job.setting is not None:
      scoring.setdefault((job.entry, job.setting.name), job)
  for e in entries.values():
    for s in e.settings:
      if s is None:
        continue
      wd = tp.workdir(root, s)
      e.record[s.seed] = tp.read_job(wd)
      job = scoring[(e.key, s.name)]
      if tp.is_done(job, root):
        e.nll[s.seed] = per_image(wd, job.num_samples, num_images=job.num_images)
        e.summary[s.seed] = eval_json(wd, job.num_samples, job.num_images)
  return entries


def fmt_lr(s) -> str:
  return "pending" if s is None else f"{s.lr:g}"


def eval_runs(evaluation: dict) -> list:
  """The runs of one evaluation: its paused-and-resumed `segments`, or itself."""
  return evaluation.get("segments") or [evaluation]


def provenance(e: Entry) -> str:
  """The commits of an entry's training segments and evaluations, and the last date."""
  runs = [r for rec in e.record.values()
          for r in rec["train"] + [x for v in rec["evals"].values() for x in eval_runs(v)]]
  return (", ".join(sorted({r["commit"] for r in runs})) + "; "
          + max(r["date"] for r in runs)) if runs else ""


def headline_section(p, root: str, entries: dict, order: list, pooled) -> list:
  vae = entries.get("vae")
  lines = ["## Headline table", "",
           f"Test NLL at K={p.num_samples} on all test images (nats, lower is better): "
           "the mean over seeds and, after it, the SD across seeds. \"vs VAE, per seed\": "
           "mean over test images of NLL(row) - NLL(VAE) for the same seed (+- SE over "
           "images); \"vs VAE\": the seed-mean paired difference with its SE across "
           "seeds / over images (`experiments/table_stats.py`).", "",
           "| model | lr | LSTMs at | seeds | test NLL | -ELBO | vs VAE, per seed | vs VAE "
           "| best valid ELBO | paper NLL | code, last date |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
  for key in order:
    e = entries[key]
    done = len(e.nll)
    if not done:
      lines.append(f"| {e.label} | {fmt_lr(e.setting)} | "
                   f"{tp.LSTM_LABELS[e.setting.lstm] if e.setting else ''} | 0 of "
                   f"{len(e.settings)} | pending | | | | | "
                   f"{mnist_configs.PAPER_NLL[e.row]:.2f} | |")
      continue
    means = table_stats.seed_means(e.nll)
    nll = f"{means.mean():.2f}" + (f" ({np.std(means, ddof=1):.2f})" if done > 1 else "")
    neg_elbo = np.mean([s["neg_elbo"] for s in e.summary.values()])
    valid = np.mean([tp.best_valid_elbo(tp.workdir(root, s), p.num_epochs)
                     for s in e.settings if s is not None and s.seed in e.nll])
    per_seed = vs = ""
    if vae is not None and vae.nll and key != "vae":
      c = table_stats.compare(e.nll, vae.nll, pooled)
      per_seed = "; ".join(f"s{s} {m:+.2f}+-{se:.2f}" for s, (m, se) in c.per_seed.items())
      seed_se = "n/a" if np.isnan(c.se_seeds) else f"{c.se_seeds:.2f}"
      vs = f"{c.mean:+.2f} ({seed_se} / {c.se_images:.2f})"
    elif key == "vae":
      per_seed = vs = "reference"
    lines.append(f"| {e.label} | {e.setting.lr:g} | {tp.LSTM_LABELS[e.setting.lstm]} | "
                 f"{done} of {len(e.settings)} | {nll} | {neg_elbo:.2f} | {per_seed} | {vs} "
                 f"| {valid:.2f} | {mnist_configs.PAPER_NLL[e.row]:.2f} | {provenance(e)} |")
  return lines + [""]


BEST_OTHER = "best other row"
CLAIMS = (
    ("crVAE (both LSTM rates) < crVAE@inference and crVAE@generation < VAE < cVAE",
     (("crvae", "crvae_inference"), (tp.OTHER_LSTM, "crvae_inference"),
      ("crvae", "crvae_generation"), (tp.OTHER_LSTM, "crvae_generation"),
      ("crvae_inference", "vae"), ("crvae_generation", "vae"), ("crvae", "vae"),
      (tp.OTHER_LSTM, "vae"), ("vae", "cvae"))),
    ("T=8 is the best of T = 4, 8, 16", (("crvae", "crvae_t4"), ("crvae", "crvae_t16"))),
    ("crIWA < crVAE (T=8)", (("criwa", "crvae"),)),
    ("Two stochastic layers are best", (("crvae_2layer", BEST_OTHER),)),
)


def verdict_section(entries: dict, order: list, pooled) -> list:
  lines = ["## Verdicts", "",
           "One line per claim of the paper, \"A < B\" (A has the lower NLL): the paired "
           "difference NLL(A) - NLL(B) over test images, seed means, with its standard "
           "error across training seeds (a one-seed entry takes the pooled seed variance "
           "of the entries with several"
           + ("" if pooled is None else f", SD {np.sqrt(pooled):.2f} nats") + ") and over "
           f"test images. **holds**: difference <= -{table_stats.NOISE_SE:g} SE; **does not "
           f"hold**: >= +{table_stats.NOISE_SE:g} SE; **within noise** otherwise; SE = the "
           "larger of the two. (With 3 seeds a t-test at 5% would need about 4.3 SE.)", ""]
  finished = {k: e for k, e in entries.items() if k in order and e.nll}
  for title, pairs in CLAIMS:
    pairs = [(a, b) for a, b in pairs if a in entries and (b in entries or b == BEST_OTHER)]
    if not pairs:
      continue  # rows not in this run
    lines.append(f"**{title}**")
    for a, b in pairs:
      if b == BEST_OTHER:
        others = {k: np.mean(table_stats.seed_means(e.nll)) for k, e in finished.items()
                  if k != a}
        b = min(others, key=others.get) if others else None
      ea, eb = entries.get(a), entries.get(b)
      label = lambda e, k: e.label if e else tp.ROW_LABELS.get(k, str(k))
      text = f"- {label(ea, a)} < {label(eb, b) if b else BEST_OTHER}: "
      if not (ea and eb and ea.nll and eb.nll):
        lines.append(text + "pending")
        continue
      c = table_stats.compare(ea.nll, eb.nll, pooled)
      caveat = (", provisional: one seed per entry so far, so this SE is the test "
                "images' alone, without training-seed noise" if c.provisional else "")
      lines.append(text + f"**{c.verdict}** ({table_stats.describe(c)}{caveat})")
    lines.append("")
  return lines


def kcheck_section(p: tp.Protocol, root: str, entries: dict, png: str) -> list:
  n, big = p.k_curve_images, p.k_curve_samples
  ks = [1, 10, 100, p.num_samples, big]
  if not any(r in entries for r in p.k_curve_rows):
    return []
  lines = [f"## The K check: how much K={p.num_samples} overstates the NLL", "",
           f"Seed 0 of each model on the first {n} test images, scored at K={big} (keeping "
           f"the K={p.num_samples} estimate of its first {p.num_samples} samples) and at "
           "K=100 (keeping K=10). Sample k of image i is the same draw in every run, so "
           "the estimates are nested; K=1 is the ELBO (the mean log-weight over the "
           f"{big} samples). Every IS estimate is an upper bound on -log p(x) in "
           f"expectation, so the gap K={p.num_samples} - K={big} is a lower bound on how "
           f"much K={p.num_samples} overstates the NLL.", "",
           "| model | " + " | ".join(f"K={k}" for k in ks)
           + f" | K={p.num_samples} - K={big}, paired | same draws as the headline run |",
           "|---|" + "---|" * (len(ks) + 2)]
  per_model, curves = {}, {}
  for row in (r for r in p.k_curve_rows if r in entries):
    e = entries[row]
    s = e.setting
    jobs = [tp.Job("eval", "", row, s, num_samples=k, report_k=r, num_images=n)
            for k, r in ((big, p.num_samples), (100, 10))]
    if s is None or not all(tp.is_done(j, root) for j in jobs):
      lines.append(f"| {e.label} | " + " | ".join("pending" for _ in ks) + " | | |")
      continue
    wd = tp.workdir(root, s)
    arrays = [per_image(wd, big, "neg_elbo", n), per_image(wd, 100, "nll_report", n),
              per_image(wd, 100, "nll", n), per_image(wd, big, "nll_report", n),
              per_image(wd, big, "nll", n)]
    per_model[row] = arrays
    gaps = [stats.mean_and_stderr(a - arrays[-1]) for a in arrays]
    curves[e.label] = (ks, [a.mean() for a in arrays], [g[0] for g in gaps],
                       [g[1] for g in gaps])
    same = "headline K=%d run pending" % p.num_samples
    if 0 in e.nll:
      same = (f"max abs difference {np.abs(e.nll[0][:n] - arrays[3]).max():.1e} nats "
              f"over the {n} images")
    lines.append(f"| {e.label} | " + " | ".join(f"{a.mean():.2f}" for a in arrays)
                 + f" | {gaps[3][0]:+.3f} +- {gaps[3][1]:.3f} | {same} |")
  if len(per_model) >= 2:  # each model against the VAE (or the first), by K
    base = "vae" if "vae" in per_model else next(iter(per_model))
    lines += [""] + [
        f"- Paired difference {entries[base].label} - {entries[row].label} on these images, "
        "by K: " + "; ".join("K=%d %+.2f +- %.2f" % ((k,) + stats.mean_and_stderr(x - y))
                             for k, x, y in zip(ks, per_model[base], arrays)) + "."
        for row, arrays in per_model.items() if row != base]
  if curves:
    table_plots.nll_vs_k(curves, png, f"Test NLL vs K, first {n} test images, seed 0")
    lines += ["", f"![NLL vs K]({os.path.basename(png)})"]
  return lines + [""]


def curves_section(p, root: str, entries: dict, order: list, png: str) -> list:
  curves = {}
  for key in order:
    e = entries[key]
    runs = [tp.valid_curve(tp.workdir(root, s)) for s in e.settings if s is not None]
    runs = [(x[x <= p.num_epochs + 1e-6], y[x <= p.num_epochs + 1e-6]) for x, y in runs
            if len(x)] if p.num_epochs else []
    if runs:
      curves[e.label] = runs
  if not curves:
    return ["## Learning curves", "", "pending", ""]
  table_plots.valid_curves(curves, png, f"Validation ELBO of every row at its chosen "
                           f"setting ({p.num_epochs:g}-epoch budget; thin: seeds 1, 2)")
  return ["## Learning curves", "", f"![validation ELBO vs epoch]({os.path.basename(png)})",
          ""]


def release_section(p, entries: dict) -> list:
  rel = {k.split(":", 1)[1]: e for k, e in entries.items() if k.startswith("release:")}
  if not rel:
    return []
  images = ("all test images" if p.release_images is None
            else f"the first {p.release_images} test images")
  lines = ["## The release's recipe (a labelled variant, not the headline)", "",
           "Seed 0 of each row with the release's per-row learning rate (VAE/cVAE 3e-4, "
           "crVAE family 3e-3 as in `experiments/configs/mnist.py`), LSTMs at lr/T and "
           "the release's KL weight (beta 0.784; crIWA 1), for the same budget and "
           f"constant lr. Test NLL at K={p.num_samples} on {images}; the paired "
           "differences (+- SE over images) are over the same images, the headline "
           "setting's included.", "",
           "| model | lr | LSTMs at | beta | test NLL | -ELBO | vs release VAE | vs the "
           "headline setting (seed 0) |", "|---|---|---|---|---|---|---|---|"]
  base = rel.get("vae")
  for row in tp.TABLE_ORDER:
    e = rel.get(row)
    if e is None:
      continue
    s = e.setting
    if 0 not in e.nll:
      lines.append(f"| {e.label} | {s.lr:g} | {tp.LSTM_LABELS[s.lstm]} | {s.beta:g} | "
                   "pending | | | |")
      continue
    diff = lambda x: "%+.2f +- %.2f" % stats.mean_and_stderr(e.nll[0] - x[:len(e.nll[0])])
    head = entries.get(row)
    lines.append(
        f"| {e.label} | {s.lr:g} | {tp.LSTM_LABELS[s.lstm]} | {s.beta:g} | "
        f"{e.summary[0]['nll']:.2f} | {e.summary[0]['neg_elbo']:.2f} | "
        f"{diff(base.nll[0]) if base and 0 in base.nll and row != 'vae' else '-'} | "
        f"{diff(head.nll[0]) if head and 0 in head.nll else 'pending'} |")
  return lines + [""]


def runs_section(p, root: str, root_label: str, from_records=frozenset(),
                 records: str = "", note: str = "") -> list:
  lines = ["## Runs", "", "Every workdir under `" + root_label + "`: training segments "
           "(epochs from -> to, wall time, commit, date, load average at start, command) "
           "and evaluations. A workdir marked (record) is gone or lacks work its copied "
           "records hold: its numbers are read from those records "
           "(experiments/table_records.py). \"replaced\" lists an earlier run of the same "
           "setting whose workdir was lost and which this run, trained again from "
           "scratch, replaced (a grid pilot's, whose grid score is kept).", "",
           "| workdir | training | evaluations | machine |", "|---|---|---|---|"]
  commands, seen = [], set()
  cmd = lambda c: (commands.append(c) if c not in commands else None,
                   f"[c{commands.index(c) + 1}]")[1]
  for job in tp.plan(p, root):
    if job.setting is None or job.setting.name in seen:
      continue
    seen.add(job.setting.name)
    rec = tp.read_job(tp.workdir(root, job.setting))
    if not rec["train"]:
      continue
    cut = " (interrupted; epochs and time to its last checkpoint)"
    train = "<br>".join(f"{s['epochs_from']:g}->{s['epochs_to']:g} ep"
                        f"{cut if s.get('interrupted') else ''}, "
                        f"{s['seconds'] / 60:.1f} min, {s['commit']}, {s['date']}, load "
                        f"{s['load']:.1f} {cmd(s['command'])}" for s in rec["train"])
    if rec.get("failed"):
      train += f"<br>stopped: {rec['failed']['message'][:80]}"
    replaced = rec.get("replaced") or (tp.read_job(os.path.join(
        records, job.setting.name)).get("replaced") if records else None) or []
    for old in replaced:
      train += "<br>replaced: " + "; ".join(
          f"{s['epochs_from']:g}->{s['epochs_to']:g} ep, {s['seconds'] / 60:.1f} min, "
          f"{s['commit']}, {s['date']}, {s['machine']} {cmd(s['command'])}"
          for s in old["train"]) + "".join(
          f", {k} {v.get('date', '')}" for k, v in old["evals"].items())
    evals = "<br>".join(
        f"{k}: {v['seconds'] / 60:.1f} min, {v['commit']}, {v['date']} {cmd(v['command'])}"
        if len(eval_runs(v)) == 1 else
        f"{k}: {v['seconds'] / 60:.1f} min in {len(eval_runs(v))} runs (" + "; ".join(
            f"{r['images']} img, {r['seconds'] / 60:.1f} min, {r['commit']}, {r['date']} "
            f"{cmd(r['command'])}" for r in eval_runs(v)) + ")"
        for k, v in rec["evals"].items())
    machines = sorted({s["machine"] for s in rec["train"] + [
        r for v in rec["evals"].values() for r in eval_runs(v)]})
    mark = " (record)" if job.setting.name in from_records else ""
    lines.append(f"| `{job.setting.name}`{mark} | {train} | {evals} | "
                 f"{'; '.join(machines)} |")
  # The runner's --note is usually the report's Note: say so instead of repeating it.
  short = lambda c: c.replace("--note=" + note, "--note=<the Note above>") if note else c
  lines += [""] + [f"- [c{i + 1}] `{short(c)}`" for i, c in enumerate(commands)]
  return lines + [""]


def write_report(p: tp.Protocol, root: str, pilot_root: str, output: str, *,
                 command: str, commit: str, note: str = "", root_label: str = "",
                 records: str = "", from_records=frozenset()) -> list:
  """Writes the markdown `output` and its PNGs (<output stem>_*.png); returns the paths.
  `root` is read (table_records.merged_root's view); `root_label` is the runs' directory
  as the report names it (default root), `from_records` the workdirs read from copies
  under `records`."""
  root_label = root_label or root
  entries = collect(p, root)
  stem = os.path.splitext(output)[0]
  png = {k: f"{stem}_{k}.png" for k in ("budget", "valid_elbo", "nll_vs_k")}
  order = [k for k in tp.TABLE_ORDER if k in entries]
  if tp.OTHER_LSTM in entries:
    order.insert(order.index("crvae") + 1 if "crvae" in order else len(order), tp.OTHER_LSTM)
  pooled = table_stats.pooled_seed_variance([entries[k].nll for k in order])
  jobs = tp.plan(p, root)
  status = ", ".join(
      f"{name} {sum(tp.is_done(j, root) for j in jobs if j.stage == st)} of "
      f"{sum(j.stage == st for j in jobs)}"
      for name, st in (("grid runs", "lr_grid"), ("training runs", "train"),
                       ("evaluations", "eval")))
  c = mnist_configs.config_at_scale("crvae", p.scale)
  test_set = next((s["test_set"] for e in entries.values() for s in e.summary.values()),
                  f"the config's '{c.data.test_set}' test set")
  seeded = ", ".join(tp.ROW_LABELS[r] for r in p.seeded_rows if r in p.rows)
  lines = [
      f"# Table 1 (MNIST NLL), {p.scale.upper()} scale: tuned learning rates, seeds, "
      f"K={p.num_samples}", "",
      f"Written by `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} "
      f"(code {commit}) from the runs under `{root_label}` and the pilot curves under "
      f"`{pilot_root}`. Every number is read from those runs"
      + (f" (or, for the workdirs marked (record) under Runs, which are gone or behind "
         f"their records, from the copies in `{os.path.relpath(records, REPO)}`)"
         if from_records else "")
      + "; each run's command, commit, date and machine are listed under Runs. "
      "Finished so far: " + status + ".", ""]
  if note:
    lines += [f"Note: {note}", ""]
  lines += [
      "## Protocol", "",
      f"- Models: the rows of `experiments/configs/mnist.py` at {p.scale} scale (width "
      f"{c.model.width}, LSTM hidden {c.model.lstm_hidden}, latent 4x4x"
      f"{c.model.latent_channels}), batch {c.train.batch_size}; 50,000 training images "
      "(dynamically binarized), validation: the last 10,000 training images.",
      f"- Training: Adam at a constant learning rate (the config's halving off), LSTM "
      f"gradients clipped at {c.optim.lstm_grad_clip:g}, KL weight beta = {p.beta:g} (the "
      "true ELBO) for every headline row, so crIWA and crVAE differ only in the bound; the "
      "scored checkpoint is the best by validation ELBO (checked every epoch).",
      f"- Seeds (model init and batch order): {p.num_seeds} for {seeded}; 1 for the other "
      f"rows; {p.other_lstm_seeds} for crVAE (T=8) at its other LSTM rate.",
      f"- Test NLL: importance sampling with K={p.num_samples} on every test image "
      f"({test_set}), estimator seed 0, BatchNorm in inference mode.",
      "- Kernels: each run's convolution kernels (`model.conv_impl`) and malloc are in "
      "its machine line under Runs (lines without them: `conv_impl` 'auto', i.e. the "
      "'cpu' kernels of their commit; their malloc was not recorded). A run keeps the "
      "kernels it started with; kernels change float rounding only "
      "(tests/test_onednn_conv.py), as does the CPU model.",
      "- Verdicts: see Verdicts for the rule.", ""]
  lines += table_choices.budget_section(p, pilot_root, png["budget"])
  lines += table_choices.grid_section(p, root)
  lines += headline_section(p, root, entries, order, pooled)
  lines += verdict_section(entries, order, pooled)
  lines += kcheck_section(p, root, entries, png["nll_vs_k"])
  lines += curves_section(p, root, entries, order, png["valid_elbo"])
  lines += release_section(p, entries)
  lines += table_choices.cost_section(p, root, pilot_root)
  lines += runs_section(p, root, root_label, from_records, records, note)
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  with open(output, "w", encoding="utf-8") as f:
    f.write("\n".join(lines))
  return [output] + [x for x in png.values() if os.path.exists(x)]
