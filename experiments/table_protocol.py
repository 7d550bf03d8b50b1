r"""The Table 1 experiment's protocol: its jobs, their workdirs and what they record.

`experiments/mnist_table.py` runs the jobs, `experiments/table_report.py` reads them.
Nothing here trains, evaluates or reads flags.

Every job's workdir is named by its setting, <root>/<row>_lr<lr>[_lstm<T|full>]_b<beta>_s<seed>
(`_lstmT`: the LSTMs train at lr/T as in the paper, `_lstmfull`: at lr; no tag: the row
has no LSTM), and holds the training loop's files (metrics.jsonl, best/, checkpoints/),
evaluate's (eval_test_K<K>.json and the per-image eval_test_K<K>_<name>.npy; those of the
first N test images in test_first<N>/), and job.json: the setting, its config overrides,
one entry per training segment and one per evaluation (seconds, commit, date, machine,
command).

The jobs, phase by phase (PHASES: VAE and crVAE first; each job skips finished work;
`plan` lists them in order):
  1. lr grid: each row at every lr x LSTM rate for `grid_epochs`, seed 0, constant lr.
  2. row by row, seed 0 at its best grid setting for `num_epochs`, then its test NLL at
     K=`num_samples` on all test images, then (K-check rows) the K check: the first
     `k_curve_images` test images at K=`k_curve_samples` (also keeping K=`num_samples`)
     and K=100 (also keeping K=10); crVAE (T=8) also at its other LSTM rate. The
     grid's workdir is continued: with a constant lr, training to `num_epochs` is the
     pilot run extended (resume is exact), so seed 0 costs num_epochs - grid_epochs.
  3. seeds 1.. of the seeded rows, then of crVAE's other LSTM rate.
After the phases: the release's recipe (the config's lr, LSTMs at lr/T, its beta), seed 0,
scored at K=`num_samples` on the first `release_images` test images (None: all).
"""

import dataclasses
import json
import math
import os
from typing import Optional

import numpy as np

from crvae_jax.train.checkpoints import write_file_atomic
from experiments.configs import mnist as mnist_configs
from experiments.provenance import REPO


def beside_checkout(name: str) -> str:
  """../runs/<name> next to this checkout: where the table's workdirs live by default
  (outside the checkout, so a fresh clone or CI never sees them)."""
  return os.path.normpath(os.path.join(REPO, "..", "runs", name))

# Run order: the comparison that matters first, the slowest row (k=5 samples) last.
RUN_ORDER = ("vae", "crvae", "cvae", "crvae_inference", "crvae_generation", "crvae_t4",
             "crvae_t16", "crvae_2layer", "criwa")
TABLE_ORDER = ("vae", "cvae", "crvae_inference", "crvae_generation", "crvae_t4", "crvae",
               "crvae_t16", "criwa", "crvae_2layer")
ROW_LABELS = {"vae": "VAE", "cvae": "cVAE", "crvae_inference": "crVAE@inference",
              "crvae_generation": "crVAE@generation", "crvae_t4": "crVAE (T=4)",
              "crvae": "crVAE (T=8)", "crvae_t16": "crVAE (T=16)",
              "criwa": "crIWA (T=8, k=5)", "crvae_2layer": "crVAE, 2 stochastic layers"}
# The order of the work: each phase's grid, its rows' seed 0 (and test NLL), its K check,
# its further seeds; the claim that matters most (crVAE vs VAE) is complete first.
PHASES = (("vae", "crvae"), ("cvae", "crvae_inference", "crvae_generation"),
          ("crvae_t4", "crvae_t16", "crvae_2layer", "criwa"))
NO_LSTM_ROWS = ("vae", "cvae")
LSTM_LABELS = {"T": "lr/T", "full": "lr", None: "-"}
OTHER_LSTM = "crvae_other_lstm"  # entry: crVAE (T=8) at the LSTM rate its grid did not pick
# Rough train time per epoch relative to crVAE (T=8), from the train times of the 2-epoch
# CPU table (2026-11-28); used only by --plan for rows with no finished work.
RELATIVE_EPOCH_COST = {"criwa": 4.8, "crvae_2layer": 1.4}
# The budget rule: the first epoch >= BUDGET_MIN_EPOCHS at which the VAE's best validation
# ELBO gained less than BUDGET_GAIN nats per epoch over the last BUDGET_WINDOW epochs.
BUDGET_GAIN, BUDGET_WINDOW, BUDGET_MIN_EPOCHS = 0.3, 5, 20


@dataclasses.dataclass(frozen=True)
class Setting:
  """What one training run is: row, learning rate, LSTM rate, KL weight, seed."""
  row: str
  lr: float
  lstm: Optional[str]  # 'T': LSTMs at lr/T (paper); 'full': at lr; None: no LSTM
  beta: float
  seed: int

  @property
  def name(self) -> str:
    lstm = "" if self.lstm is None else f"_lstm{self.lstm}"
    return f"{self.row}_lr{self.lr:g}{lstm}_b{self.beta:g}_s{self.seed}"

  def overrides(self) -> dict:
    """Config overrides ('section.key': value) that make the row's config this setting."""
    out = {"optim.learning_rate": self.lr, "objective.beta": self.beta,
           "train.seed": self.seed, "optim.halve_every_epochs": 0.0}
    if self.lstm is not None:
      out["optim.lstm_lr_divisor"] = float(
          mnist_configs.ROWS[self.row][1] if self.lstm == "T" else 1)
    return out


@dataclasses.dataclass(frozen=True)
class Protocol:
  """The experiment's numbers (see the flags of experiments/mnist_table.py)."""
  rows: tuple = RUN_ORDER
  scale: str = "cpu"
  lrs: tuple = (3e-4, 1e-3, 3e-3)
  grid_epochs: float = 5.0
  num_epochs: Optional[float] = None  # None: not decided yet (train jobs wait)
  beta: float = 1.0
  num_seeds: int = 3
  seeded_rows: tuple = ("vae", "cvae", "crvae")
  other_lstm_seeds: int = 1
  num_samples: int = 1000
  k_curve_rows: tuple = RUN_ORDER
  k_curve_samples: int = 5000
  k_curve_images: int = 1000
  # Rows that take crVAE (T=8)'s grid choice instead of a grid of their own: crIWA (then
  # it differs from crVAE only in the bound); naming the other crVAE variants too saves
  # their grids (~5 hours on 2 cores at CPU scale), but those rows are then not tuned.
  from_crvae_grid: tuple = ("criwa",)
  release: bool = True
  # The release's rows are a labelled variant, not the headline: scored at num_samples on
  # the first this many test images (None: all), each paired with the headline rows on
  # the same images (a tenth of the evaluation cost of all 10,000; `--plan` shows it).
  release_images: Optional[int] = 1000

  def __post_init__(self):
    if not self.rows:
      raise ValueError(f"rows: none given; choose from {RUN_ORDER}")
    unknown = [r for r in self.rows + self.seeded_rows + self.k_curve_rows
               if r not in RUN_ORDER]
    if unknown:
      raise ValueError(f"unknown row(s) {unknown}; choose from {RUN_ORDER}")
    positive = lambda x: isinstance(x, (int, float)) and math.isfinite(x) and x > 0
    if not self.lrs or not all(map(positive, self.lrs)):
      raise ValueError(f"lrs={list(self.lrs)}: the grid needs one or more finite "
                       "learning rates > 0")
    for name in ("grid_epochs", "num_epochs"):
      if getattr(self, name) is not None and not positive(getattr(self, name)):
        raise ValueError(f"{name}={getattr(self, name)}: a finite number of epochs > 0")
    for name, low in (("num_seeds", 1), ("other_lstm_seeds", 0), ("num_samples", 1),
                      ("k_curve_samples", 1)):
      if getattr(self, name) < low:
        raise ValueError(f"{name}={getattr(self, name)}: must be >= {low}")
    if not 0 < self.k_curve_images <= 10_000:
      raise ValueError(f"k_curve_images={self.k_curve_images}: choose 1..10000 test "
                       "images")
    if self.num_epochs is not None and self.num_epochs < self.grid_epochs:
      raise ValueError(f"the budget ({self.num_epochs:g} epochs) is shorter than the grid's "
                       f"pilots ({self.grid_epochs:g}), which its seed-0 runs continue")
    bad = [r for r in self.from_crvae_grid if r not in RUN_ORDER or r in NO_LSTM_ROWS
           or r == "crvae"]
    if bad:
      others = [r for r in RUN_ORDER if r not in NO_LSTM_ROWS and r != "crvae"]
      raise ValueError(f"from_crvae_grid: {bad} cannot take crvae's grid choice (LSTM "
                       f"rows other than crvae: {others})")
    if self.release_images is not None and not 0 < self.release_images <= 10_000:
      raise ValueError(f"release_images={self.release_images}: choose 1..10000 test "
                       "images (None: all)")
    if set(self.from_crvae_grid) & set(self.rows) and "crvae" not in self.rows:
      raise ValueError(f"{sorted(set(self.from_crvae_grid) & set(self.rows))} take crvae's "
                       "grid choice (from_crvae_grid): add crvae to the rows or leave them "
                       "out of from_crvae_grid")


@dataclasses.dataclass(frozen=True)
class Job:
  """One unit of work: train a setting to `epochs`, or score it (K, first N images)."""
  stage: str  # 'lr_grid', 'train' or 'eval'
  entry: str  # what the report calls it: 'grid:<row>', a row, OTHER_LSTM, 'release:<row>',
  #             'kcheck:<row>'
  row: str
  setting: Optional[Setting]  # None until the row's grid is finished
  seed: int = 0  # the training seed (known before the setting is)
  epochs: float = 0.0  # train: the epochs the workdir must reach
  num_samples: int = 0  # eval: K
  report_k: int = 0  # eval: the smaller K whose estimate is also kept
  num_images: Optional[int] = None  # eval: the first N test images; None: all

  @property
  def trains(self) -> bool:
    return self.stage in ("lr_grid", "train")

  @property
  def eval_key(self) -> str:
    images = "all" if self.num_images is None else f"first{self.num_images}"
    return f"test_{images}_K{self.num_samples}"


def workdir(root: str, setting: Setting) -> str:
  return os.path.join(root, setting.name)


def eval_dir(wd: str, num_images: Optional[int]) -> str:
  """Where evaluate's files of the first `num_images` test images (None: all) live."""
  return wd if num_images is None else os.path.join(wd, f"test_first{num_images}")


# ---------------------------------------------------------------------------- records


class RecordError(ValueError):
  """A record of the table's runs (job.json, grid_scores.json, protocol.json,
  metrics.jsonl, an evaluation's summary) cannot be read; the message names the file."""


def read_json(path: str, required=()) -> dict:
  """The JSON object in `path`, which must hold the keys `required`; RecordError names the
  file where it is damaged or lacks one."""
  try:
    with open(path, encoding="utf-8") as f:
      obj = json.load(f)
  except ValueError as e:  # (the real path: the report reads through a view of links)
    raise RecordError(f"{os.path.realpath(path)} is damaged ({e}): restore it (records "
                      "under results/ are committed) or move it aside") from e
  missing = [k for k in required if not isinstance(obj, dict) or k not in obj]
  if missing:
    raise RecordError(f"{os.path.realpath(path)} lacks {missing}: not a record of this "
                      "runner")
  return obj


def read_job(wd: str) -> dict:
  path = os.path.join(wd, "job.json")
  if not os.path.exists(path):
    return {"train": [], "evals": {}}
  return read_json(path, ("train", "evals"))


def metrics_lines(path: str) -> list:
  """[(line, parsed dict)] of a metrics.jsonl. A last line that does not parse and has no
  newline is one a running job is writing: left out. Any other bad line: RecordError."""
  with open(path, encoding="utf-8") as f:
    lines = [l for l in f if l.strip()]
  out = []
  for i, line in enumerate(lines):
    try:
      out.append((line, json.loads(line)))
    except ValueError as e:
      if i == len(lines) - 1 and not line.endswith("\n"):
        break
      raise RecordError(f"{os.path.realpath(path)}: line {i + 1} is damaged ({e}): "
                        "restore the file (records under results/ are committed) or move "
                        "it aside") from e
  return out


def _write_json(path: str, obj, **dump_kwargs) -> None:
  """Writes `obj` to `path` atomically: a reader never sees half of it."""
  write_file_atomic(path, json.dumps(obj, indent=2, **dump_kwargs))


def write_job(wd: str, record: dict) -> None:
  _write_json(os.path.join(wd, "job.json"), record)


def resume_point(wd: str) -> tuple:
  """(epoch, training seconds so far) where a run in `wd` resumes: the step of its last
  checkpoint (train_time.json, written at every checkpoint and at the save on SIGINT or
  SIGTERM, which can fall inside an epoch) in epochs, and the wall seconds the engine
  has counted over all its invocations up to it. Without that file (a run from before
  it): the last validated epoch, and None; a run that has not started: (0, 0)."""
  from crvae_jax.train import engine  # pylint: disable=g-import-not-at-top
  train = read_metrics(wd, "train")
  path = os.path.join(wd, engine.TIME_FILE)
  if not train and not os.path.exists(path):
    return 0.0, 0.0
  try:
    with open(path, encoding="utf-8") as f:
      saved = json.load(f)
    step, seconds = int(saved["step"]), float(saved["seconds"])
  except (OSError, ValueError, KeyError, TypeError):
    step = seconds = None
  if step is None or not train:
    done, _ = valid_curve(wd)
    return (float(done.max()) if len(done) else 0.0), None
  return round(step / steps_per_epoch(train), 4), seconds


def close_interrupted_segment(wd: str, record: dict, reached: float,
                              train_seconds) -> None:
  """A training segment that never finished (killed: the session ended, the process
  crashed) left record["running"]; turn it into a segment marked interrupted, from its
  start epoch to `reached` (where training resumes: its last checkpoint), its seconds
  those the engine counted up to that checkpoint (train_seconds minus the count at the
  segment's start; the work after the checkpoint is repeated), or, without that count,
  up to the last line of metrics.jsonl."""
  running = record.pop("running", None)
  if running is None:
    return
  started = running.pop("started")
  before = running.pop("train_seconds_before", None)
  if train_seconds is not None and before is not None:
    seconds = train_seconds - before
  else:
    path = os.path.join(wd, "metrics.jsonl")
    seconds = (os.path.getmtime(path) if os.path.exists(path) else started) - started
  record["train"].append({**running, "epochs_to": max(reached, running["epochs_from"]),
                          "seconds": max(seconds, 0.0), "interrupted": True})
  write_job(wd, record)


def trained_epochs(record: dict) -> float:
  return max([s["epochs_to"] for s in record["train"]], default=0.0)


def read_metrics(wd: str, split: str) -> list:
  path = os.path.join(wd, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  return [r for _, r in metrics_lines(path) if r.get("split") == split]


def steps_per_epoch(train_metrics: list) -> float:
  """Optimiser steps per epoch of a run, from its first train line of metrics.jsonl."""
  return train_metrics[0]["step"] / train_metrics[0]["epoch"]


def valid_curve(wd: str):
  """(epochs [n], validation ELBO [n]) from metrics.jsonl, sorted by step; a resumed
  run's repeated steps keep their last value."""
  train = read_metrics(wd, "train")
  valid = {r["step"]: r["elbo"] for r in read_metrics(wd, "valid")}
  if not valid or not train:
    return np.zeros(0), np.zeros(0)
  steps = np.array(sorted(valid))
  return steps / steps_per_epoch(train), np.array([valid[s] for s in steps])


def best_valid_elbo(wd: str, up_to_epoch: float) -> float:
  """Best validation ELBO of the run's first `up_to_epoch` epochs (-inf: none)."""
  epochs, elbo = valid_curve(wd)
  keep = (epochs <= up_to_epoch + 1e-6) & np.isfinite(elbo)
  return float(elbo[keep].max()) if keep.any() else -math.inf


def budget_epoch(epochs: np.ndarray, elbo: np.ndarray, *, gain: float = BUDGET_GAIN,
                 window: int = BUDGET_WINDOW, minimum: int = BUDGET_MIN_EPOCHS):
  """First whole epoch >= `minimum` where the best-so-far validation ELBO gained less than
  `gain` nats per epoch over the last `window` epochs; None if the curve never does."""
  e, g = window_gains(epochs, elbo, window)
  hits = [int(x) for x, y in zip(e, g) if x >= minimum and y < gain]
  return hits[0] if hits else None


def window_gains(epochs: np.ndarray, elbo: np.ndarray, window: int = BUDGET_WINDOW):
  """(epochs, nats gained per epoch over the `window` epochs before each), whole epochs;
  gains of the best-so-far ELBO (the best checkpoint is the one evaluated)."""
  whole = {int(round(x)): y for x, y in zip(epochs, np.maximum.accumulate(elbo))
           if abs(x - round(x)) < 1e-6}
  out = [(e, (whole[e] - whole[e - window]) / window) for e in sorted(whole)
         if e - window in whole]
  return np.array([e for e, _ in out]), np.array([g for _, g in out])


# ---------------------------------------------------------------------------- the plan


def grid_settings(p: Protocol, row: str) -> list:
  paths = (None,) if row in NO_LSTM_ROWS else ("T", "full")
  return [Setting(row, lr, lstm, p.beta, 0) for lr in p.lrs for lstm in paths]


def grid_rows(p: Protocol) -> list:
  return [r for r in p.rows if r not in p.from_crvae_grid]


GRID_SCORES = "grid_scores.json"  # in root and records: {workdir name: grid score}


def read_grid_scores(root: str) -> dict:
  path = os.path.join(root, GRID_SCORES)
  if not os.path.exists(path):
    return {}
  return read_json(path)


def grid_scores(p: Protocol, root: str, row: str) -> dict:
  """{setting: best validation ELBO in its first grid_epochs} of the row's finished grid
  runs (a run stopped by non-finite steps scores what it reached). A score kept in
  root's GRID_SCORES (freeze_grid_scores) is used as kept: a grid run lost with its
  workdir and trained again (on another CPU model, to other numbers) cannot change the
  choice made from it."""
  out, frozen = {}, read_grid_scores(root)
  for s in grid_settings(p, row):
    rec = read_job(workdir(root, s))
    if s.name in frozen:
      out[s] = frozen[s.name]
    elif trained_epochs(rec) >= p.grid_epochs - 1e-6 or rec.get("failed"):
      out[s] = best_valid_elbo(workdir(root, s), p.grid_epochs)
  return out


def freeze_grid_scores(p: Protocol, source: str, root: str) -> dict:
  """Adds the scores of the grid runs finished in `source` (root, or a view of root and
  its records) to root's GRID_SCORES; a score kept already stays as it is (source's
  where both keep one). Returns the file's contents."""
  before = read_grid_scores(root)
  kept = {**before, **read_grid_scores(source)}  # source's (the records') values stand
  kept.update({s.name: v for row in grid_rows(p)
               for s, v in grid_scores(p, source, row).items() if s.name not in kept})
  if kept != before:
    _write_json(os.path.join(root, GRID_SCORES), kept, sort_keys=True)
  return kept


def grid_choice(p: Protocol, root: str, row: str, lstm: str = "best") -> Optional[Setting]:
  """The row's best grid setting by validation ELBO (None: grid unfinished); lstm='T' or
  'full' restricts the choice to that LSTM rate. The rows of from_crvae_grid take
  crvae's."""
  source = "crvae" if row in p.from_crvae_grid else row
  scores = grid_scores(p, root, source)
  if len(scores) < len(grid_settings(p, source)):
    return None
  if lstm != "best":
    scores = {s: v for s, v in scores.items() if s.lstm == lstm}
  best = max(scores, key=lambda s: scores[s])  # ties: the first in grid order
  return dataclasses.replace(best, row=row)


def other_lstm(lstm: str) -> str:
  return {"T": "full", "full": "T"}[lstm]


def release_setting(p: Protocol, row: str) -> Setting:
  """The release's recipe for the row: the config's lr and beta, LSTMs at lr/T."""
  c = mnist_configs.config_at_scale(row, p.scale)
  return Setting(row, c.optim.learning_rate, None if row in NO_LSTM_ROWS else "T",
                 c.objective.beta, 0)


def plan(p: Protocol, root: str) -> list:
  """Every job of the protocol, in run order (finished ones included): phase by phase
  (PHASES), then the release's recipe."""
  best = {row: grid_choice(p, root, row) for row in p.rows}
  other = None
  if "crvae" in p.rows and best["crvae"] is not None:
    other = grid_choice(p, root, "crvae", other_lstm(best["crvae"].lstm))

  def train_eval(entry, row, s, k=0, num_images=None):
    s = None if s is None else dataclasses.replace(s, seed=k)
    return [Job("train", entry, row, s, k, epochs=p.num_epochs or 0.0),
            Job("eval", entry, row, s, k, num_samples=p.num_samples, report_k=100,
                num_images=num_images)]

  jobs = []
  for phase in PHASES:
    rows = [r for r in phase if r in p.rows]
    jobs += [Job("lr_grid", f"grid:{row}", row, s, epochs=p.grid_epochs)
             for row in rows if row in grid_rows(p) for s in grid_settings(p, row)]
    # Each model's evaluations follow its training: the runs directory may not outlive
    # a session, and a model trained but not evaluated when it is lost trains again
    # (is_finished), while an evaluated one is finished in its record.
    for row in rows:
      jobs += train_eval(row, row, best[row])
      if row in p.k_curve_rows:
        for k, report_k in ((p.k_curve_samples, p.num_samples), (100, 10)):
          jobs.append(Job("eval", f"kcheck:{row}", row, best[row], num_samples=k,
                          report_k=report_k, num_images=p.k_curve_images))
      if row == "crvae":
        jobs += train_eval(OTHER_LSTM, row, other)
    for k in range(1, p.num_seeds):
      jobs += [j for row in rows if row in p.seeded_rows
               for j in train_eval(row, row, best[row], k)]
    if "crvae" in rows:
      for k in range(1, p.other_lstm_seeds):
        jobs += train_eval(OTHER_LSTM, "crvae", other, k)
  if p.release:
    for row in p.rows:
      jobs += train_eval(f"release:{row}", row, release_setting(p, row),
                         num_images=p.release_images)
  return jobs


def is_done(job: Job, root: str) -> bool:
  if job.setting is None:
    return False
  rec = read_job(workdir(root, job.setting))
  if job.trains:
    return bool(job.epochs) and (trained_epochs(rec) >= job.epochs - 1e-6
                                 or bool(rec.get("failed")))
  done = rec["evals"].get(job.eval_key)
  return done is not None and done["trained_epochs"] == trained_epochs(rec)


def is_finished(job: Job, jobs: list, root: str, view: str) -> bool:
  """Whether the job needs no run: done in `root`, or done in `view` (root merged with the
  committed records of lost workdirs: table_records.merged_root) with no job of `jobs`
  still needing its checkpoint. A grid run or an evaluation found in a record is
  finished; a model trained in a record whose workdir is lost trains again while one of
  its evaluations is still to run, since that needs the weights."""
  if is_done(job, root):
    return True
  if not is_done(job, view):
    return False
  if job.stage == "lr_grid":
    return True
  evaluated = lambda e: is_done(e, root) or (is_done(e, view) and same_model(
      workdir(root, e.setting), workdir(view, e.setting)))
  if job.stage == "eval":
    return evaluated(job)
  return all(evaluated(e) for e in jobs if not e.trains and e.setting == job.setting)


def same_model(wd: str, other: str) -> bool:
  """Whether `other` (a workdir or its record) holds the model that workdir `wd` holds
  or continues: wd's training segments are the first of other's (none: wd is lost). A
  model trained again after its workdir was lost is another model, and is evaluated
  again, so that the record, replaced once the workdir has caught up, is one model's."""
  return continues(read_job(wd)["train"], read_job(other)["train"])


def continues(first: list, then: list) -> bool:
  """Whether training segments `then` continue `first` (first is their beginning)."""
  return then[:len(first)] == first


def is_ready(job: Job, p: Protocol, root: str) -> bool:
  """Whether the job can run now: its setting is known (the grid that picks it is
  finished), the budget is decided, and an evaluation's model is fully trained."""
  if job.setting is None or (job.stage == "train" and not p.num_epochs):
    return False
  if job.trains:
    return True
  rec = read_job(workdir(root, job.setting))
  return bool(p.num_epochs) and (trained_epochs(rec) >= p.num_epochs - 1e-6
                                 or bool(rec.get("failed")))


def busy_load() -> float:
  """A segment that started with a higher 1-minute load average than this shared the CPU
  with other work (another training job, a benchmark): 1.5x this machine's cores."""
  return 1.5 * (os.cpu_count() or 1)


def measured_rates(root: str, pilot_root: Optional[str] = None,
                   machine: Optional[str] = None):
  """({row: wall seconds per training epoch}, {row: IS decoder samples per second}) from
  the finished segments in root's job.json files, and for rows with none there, from the
  pilot curves' train_summary.json (one uninterrupted run each). Each is the median over
  a row's segments of the segment's own rate: a segment's wall time includes any time the
  runner was paused (SIGSTOP) or shared the CPU, and the median keeps a minority of such
  segments from counting, where a sum over segments let them inflate the estimate. Where
  a row has segments on `machine` (the CPU model its machine line starts with; default
  this one's, `provenance.cpu_description()`), only those count: runs on another CPU model
  may be twice as fast or slow. Of those, where some training segments started on a quiet
  machine (load <= busy_load()), only those count."""
  if machine is None:
    from experiments.provenance import cpu_description  # pylint: disable=g-import-not-at-top
    machine = cpu_description()
  here = lambda seg: str(seg.get("machine", "")).startswith(machine)
  train, evals = {}, {}  # row: [(on this machine, quiet, rate)]
  for path in sorted(_glob(root, "job.json")):
    rec = read_json(path, ("setting", "train", "evals"))
    row = rec["setting"]["row"]
    for s in rec["train"]:
      epochs = s["epochs_to"] - s["epochs_from"]
      # An interrupted segment's time is the engine's count to its last checkpoint
      # (no start-up, no work after it): not comparable with the finished ones.
      if epochs > 0 and not s.get("interrupted"):
        train.setdefault(row, []).append(
            (here(s), s.get("load", 0.0) <= busy_load(), s["seconds"] / epochs))
    for e in rec["evals"].values():
      # each run's seconds and the images it scored (an evaluation can pause and resume)
      for seg in e.get("segments") or [{"seconds": e["seconds"], "images": e["num_images"],
                                        "machine": e.get("machine", "")}]:
        if seg["seconds"] > 0 and seg["images"] > 0:
          evals.setdefault(row, []).append(
              (here(seg), True, e["num_samples"] * seg["images"] / seg["seconds"]))

  def median(rates):
    for pick in (lambda r: r[0] and r[1], lambda r: r[0], lambda r: r[1], lambda r: True):
      chosen = [r[2] for r in rates if pick(r)]
      if chosen:
        return float(np.median(chosen))
    raise ValueError("no rates")

  epoch_s = {r: median(v) for r, v in train.items()}
  for path in sorted(_glob(pilot_root, "train_summary.json")) if pilot_root else []:
    wd = os.path.dirname(path)
    seconds = read_json(path, ("train_seconds",))["train_seconds"]
    config = read_json(os.path.join(wd, "config.json"))
    if config.get("row") in RUN_ORDER and config["row"] not in epoch_s:
      epoch_s[config["row"]] = seconds / config["train"]["num_epochs"]
  return epoch_s, {r: median(v) for r, v in evals.items()}


def _glob(root: str, name: str) -> list:
  if not root or not os.path.isdir(root):
    return []
  return [os.path.join(root, d, name) for d in os.listdir(root)
          if os.path.exists(os.path.join(root, d, name))]


def pilot_curves(pilot_root: str) -> dict:
  """{workdir name: (epochs, validation ELBO, config dict)} of the pilot learning curves
  (every workdir under pilot_root with a metrics.jsonl and a config.json)."""
  out = {}
  for path in sorted(_glob(pilot_root, "metrics.jsonl")):
    wd = os.path.dirname(path)
    if not os.path.exists(os.path.join(wd, "config.json")):
      continue
    config = read_json(os.path.join(wd, "config.json"))
    epochs, elbo = valid_curve(wd)
    if len(epochs):
      out[os.path.basename(wd)] = (epochs, elbo, config)
  return out


def pilot_budget(pilot_root: str) -> Optional[int]:
  """The budget rule on the (first) VAE pilot curve; None: no VAE curve meets it yet."""
  vae = [v for v in pilot_curves(pilot_root).values() if v[2]["model"]["variant"] == "vae"]
  return budget_epoch(vae[0][0], vae[0][1]) if vae else None
