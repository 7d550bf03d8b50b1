r"""The paper's Table 1 (MNIST NLL of every crVAE-family row) as a seeded experiment.

  python -m experiments.mnist_table --plan                  # every job, its cost, status
  nohup python -m experiments.mnist_table --stop_after_minutes=300 > table.log 2>&1 &
  python -m experiments.mnist_table --stage=lr_grid         # one stage only
  python -m experiments.mnist_table --stage=report          # rewrite results/mnist_table.md

Stages (experiments/table_protocol.py has the job list and the workdir layout):
  lr_grid  every row at lr in --lrs x LSTMs at {lr/T, lr}, beta 1, seed 0, constant lr,
           for --grid_epochs; each row's best setting by validation ELBO;
  train    each row at its best setting for the budget (--num_epochs; default: the rule
           on the VAE pilot curve in --pilot_root), --num_seeds seeds for --seeded_rows,
           one for the others, crVAE (T=8) also at its other LSTM rate; then the
           release's recipe (--release); the grid's seed-0 workdir is continued;
  eval     IS NLL at K=--num_samples on all test images for every trained model (the
           release's rows: on the first --release_images), and the K check:
           --k_curve_samples on the first --k_curve_images for --k_curve_rows;
  report   results/mnist_table.md and its PNGs (experiments/table_report.py).
--stage=all (default) runs every job in the protocol's order and rewrites the report
after each. Finished work is skipped and a killed job resumes (training from its last
checkpoint: every epoch, and on SIGINT/SIGTERM where it stands). Each training segment
is written to the workdir's job.json (epochs, wall time, commit, date, load, command);
one killed before its end is kept as interrupted, up to its last checkpoint.
--stop_after_minutes starts only jobs that finish in time by the --plan estimate (the
first ready one that fits, in the protocol's order; a model's training only with time for
its evaluations too; an evaluation whose estimate was low still pauses at the limit) and
stops when none fits; with --cut_to_fit it runs the next job cut to the limit instead
(training: the whole epochs that fit; an evaluation scores the images that fit, keeps
them in its workdir and resumes in the next run, also after a kill). --max_jobs stops
after that many jobs.
Workdirs live outside the checkout (--root), so that a later session can resume them;
the protocol's numbers are kept in <root>/protocol.json and a run with other numbers on
the same root is refused. Each report first copies every workdir's small records into
the checkout (--records, experiments/table_records.py): if the root is lost, finished
numbers stay in the report, and the runner schedules from them too
(table_protocol.is_finished): grid runs and evaluations in the records are not run
again; a model whose record is trained but whose evaluations are not trains again.
"""

import contextlib
import dataclasses
import fcntl
import glob
import json
import math
import os
import shutil
import sys
import time
import traceback
from typing import Optional

from absl import app, flags, logging
import jax
import numpy as np

from crvae_jax import host_memory, likelihood
from crvae_jax.families import mnist as mnist_family
from crvae_jax.models import layers
from crvae_jax.train import checkpoints
from crvae_jax.train.guards import NonFiniteError
from experiments import launch
from experiments import table_protocol as tp
from experiments import table_records, table_report
from experiments.configs import mnist as mnist_configs
from experiments.provenance import REPO, cpu_description, git_commit

SAMPLE_EVERY_EPOCHS = 10.0  # prior-sample PNGs during training
# CPU-scale evaluations decode 50 samples x 20 images per call: at K=1000 ~1.2x the
# rate of the config's 20 x 50, which is sized for its K=20 (benchmarks/RESULTS.md,
# "Chunk and batch at K=1000"). The estimate does not depend on the chunk: sample k of
# image i has its own key (crvae_jax/likelihood.py).
CPU_EVAL_CHUNK_AND_BATCH = (50, 20)
EVAL_OVERHEAD_S = 30.0  # --plan: start-up and compilation of one evaluation
MIN_EVAL_MINUTES = 3.0  # --stop_after_minutes: no evaluation starts with less time left
EVAL_BATCH_MARGIN_S = 30.0  # the deadline is this early: time to save and write records
PLAN_ASSUMED_EPOCHS = 30.0  # --plan's budget while it is undecided

FLAGS = flags.FLAGS
flags.DEFINE_enum("stage", "all", ["all", "lr_grid", "train", "eval", "report"],
                  "Which jobs to run; 'report' only rewrites the table.")
flags.DEFINE_bool("plan", False, "Print every job in order with its estimated cost and "
                  "status, then exit (runs nothing).")
flags.DEFINE_list("rows", list(tp.RUN_ORDER), f"Rows, from {tp.RUN_ORDER}.")
flags.DEFINE_enum("scale", "cpu", ["cpu", "paper"], "Config scale of every row.")
flags.DEFINE_string("root", None, "Workdir root; default ../runs/mnist_table_<scale> "
                    "beside the checkout (kept between sessions).")
flags.DEFINE_string("pilot_root", None, "The pilot learning curves (the budget rule); "
                    "default ../runs/mnist_pilots beside the checkout.")
flags.DEFINE_string("records", None, "Copies of each finished job's small records "
                    "(experiments/table_records.py), read by the report where a workdir "
                    "is lost; default results/mnist_table_records (paper scale: "
                    "results/mnist_table_paper_records); '' turns them off.")
flags.DEFINE_string("output", None, "Markdown table; default results/mnist_table.md "
                    "(paper scale: results/mnist_table_paper.md). PNGs go beside it.")
flags.DEFINE_float("num_epochs", None, "The budget, equal for every row; default: the "
                   "budget rule on the VAE pilot curve, or the value in protocol.json.")
flags.DEFINE_float("grid_epochs", 5.0, "Epochs of each lr-grid pilot.")
flags.DEFINE_list("lrs", ["3e-4", "1e-3", "3e-3"], "The learning-rate grid.")
flags.DEFINE_integer("num_seeds", 3, "Training seeds of --seeded_rows.")
flags.DEFINE_list("seeded_rows", ["vae", "cvae", "crvae"], "Rows with --num_seeds seeds.")
flags.DEFINE_integer("other_lstm_seeds", 1, "Seeds of crVAE (T=8) at its other LSTM rate.")
flags.DEFINE_integer("num_samples", 1000, "K of the headline test NLL (all test images).")
flags.DEFINE_list("k_curve_rows", list(tp.RUN_ORDER), "Rows of the K check (seed 0 of "
                  "each row's selected setting; default every row, so that each model's "
                  "K=1000 overstatement is measured). Each row's "
                  "K check follows its evaluation (a model is not kept for later).")
flags.DEFINE_integer("k_curve_samples", 5000, "The K check's largest K.")
flags.DEFINE_integer("k_curve_images", 1000, "The K check scores the first this many "
                     "test images.")
flags.DEFINE_list("from_crvae_grid", ["criwa"], "Rows that take crVAE (T=8)'s grid "
                  "choice instead of a grid of their own: crIWA (the two then differ only "
                  "in the bound); adding crvae_t4, crvae_t16, crvae_inference, "
                  "crvae_generation, crvae_2layer saves their grids (~5 hours on 2 cores "
                  "at CPU scale), but those rows are then not tuned. '' for none.")
flags.DEFINE_bool("release", True, "Also train the release's recipe (config lr, LSTMs at "
                  "lr/T, beta 0.784), seed 0, after everything else.")
flags.DEFINE_integer("release_images", 1000, "The release's rows (a labelled variant, "
                     "not the headline) are scored at --num_samples on the first this "
                     "many test images, paired with the headline rows on the same images; "
                     "0: all 10,000 (ten times the evaluation time).")
flags.DEFINE_integer("max_jobs", None, "Stop after this many jobs.")
flags.DEFINE_float("stop_after_minutes", None, "Start no job that would not finish within "
                   "this many minutes of the start, by the --plan estimate (a model's "
                   "training with its evaluations): the first ready job that fits runs (a "
                   "later one where the next does not fit), and the run stops when none "
                   "fits (saying so when the next job fits in no run this long). With "
                   "--cut_to_fit the next job runs cut to the limit instead (stopping "
                   "when not one epoch, or not MIN_EVAL_MINUTES, is left).")
flags.DEFINE_bool("cut_to_fit", False, "With --stop_after_minutes: run the next job in "
                  "the protocol's order even if it does not fit, cut to the limit "
                  "(training: the whole epochs that fit; an evaluation: scores the images "
                  "that fit and resumes next run). Cut work resumes only where --root "
                  "survives to the next run (the default runs whole jobs only, since a "
                  "lost root loses cut work).")
flags.DEFINE_float("epoch_seconds", 80.0, "--plan and --stop_after_minutes: seconds per "
                   "crVAE (T=8) training epoch while no run has been timed (the pilot "
                   "curves took about 80 s per epoch on the 2-core VM, 2026-12-03).")
flags.DEFINE_float("eval_samples_per_s", 2500.0, "--plan: IS decoder samples per second "
                   "while no evaluation has been timed (benchmarks/RESULTS.md: 5085 on the "
                   "idle 2-core VM; halved for a shared machine).")
for _name in ("epoch_seconds", "eval_samples_per_s"):
  flags.register_validator(_name, lambda x: x > 0, f"--{_name} must be > 0")
flags.DEFINE_enum("conv_impl", "fastest", list(layers.CONV_IMPLS), "model.conv_impl of "
                  "jobs whose workdir holds no run yet ('fastest', the configs' default: "
                  "oneDNN's CPU convolutions where they build; benchmarks/RESULTS.md). A "
                  "workdir keeps the kernels it started with, so that its resume stays "
                  "exact. Kernels change float rounding only; the Runs table names each "
                  "run's.")
flags.DEFINE_bool("fused_backward", True, "model.fused_backward of jobs whose workdir "
                  "holds no run yet (as --conv_impl).")
flags.DEFINE_string("note", "", "A line added to the report (e.g. how the runs shared the "
                    "machine).")

# ------------------------------------------------------------ the library, in two calls


def train(config, workdir: str, data) -> None:
  """Train (or resume) `config` in `workdir` to config.train.num_epochs."""
  mnist_family.train_and_evaluate(config, workdir, data=data)


def score(config, workdir: str, data, deadline=None) -> dict:
  """IS test NLL of the workdir's best checkpoint (config.eval) on data.test_binary;
  writes eval_test_K<K>.json and eval_test_K<K>_<name>.npy into the workdir and returns
  its summary. Past `deadline` (time.monotonic()) it saves the finished images and
  raises likelihood.EvaluationPaused; the next call resumes."""
  return mnist_family.evaluate(config, workdir, data=data, deadline=deadline)


def load_data(config):
  return mnist_family.load_data(config)


def base_config(row: str, scale: str):
  """The row's config before the job's overrides (tests substitute a tiny one)."""
  return mnist_configs.config_at_scale(row, scale)


# ------------------------------------------------------------------------------ jobs


def job_config(p: tp.Protocol, job: tp.Job, epochs=None):
  c = base_config(job.row, p.scale)
  for key, value in overrides(job.setting, c.model.num_blocks).items():
    section, name = key.split(".")
    c[section][name] = value
  c.train.num_epochs = float(epochs or p.num_epochs or job.epochs)
  if not job.trains:
    c.eval.num_samples, c.eval.report_k = job.num_samples, job.report_k
    if p.scale == "cpu":
      c.eval.chunk_size, c.eval.batch_size = CPU_EVAL_CHUNK_AND_BATCH
  return c


def with_kernels(config, wd: str):
  """`config` with the kernels of the run in `wd`: those its config.json saved (changed,
  its resume would not be exact), else --conv_impl and --fused_backward
  (`checkpoints.settle_kernels`)."""
  config.model.conv_impl, config.model.fused_backward = (FLAGS.conv_impl,
                                                         FLAGS.fused_backward)
  checkpoints.settle_kernels(wd, config)
  return config


def kernels_label(config) -> str:
  """'conv cpu', 'conv onednn + fused backward', ... (the Runs table's machine column)."""
  return layers.kernels_label(config.model.conv_impl, config.model.fused_backward)


def overrides(setting: tp.Setting, num_blocks: int) -> dict:
  out = setting.overrides()
  if "optim.lstm_lr_divisor" in out:  # lr/T with the config's T
    out["optim.lstm_lr_divisor"] = float(num_blocks if setting.lstm == "T" else 1)
  return {**out, "train.sample_every_epochs": SAMPLE_EVERY_EPOCHS}


def provenance(commit: str, config=None) -> dict:
  """Commit, date, machine (with the run's kernels and malloc where `config` is given),
  load and command of a training segment or an evaluation."""
  run = f", {kernels_label(config)}, {host_memory.description()}" if config else ""
  return {"commit": commit, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
          "machine": f"{cpu_description()}, jax {jax.__version__}"
                     f" {jax.devices()[0].device_kind} x{jax.device_count()}{run}",
          "load": os.getloadavg()[0], "command": command_line()}


def command_line() -> str:
  return " ".join(["python -m experiments.mnist_table"] + sys.argv[1:])


def run_train(p, job, root: str, data, epochs: float, commit: str) -> None:
  wd = tp.workdir(root, job.setting)
  config = with_kernels(job_config(p, job, epochs), wd)
  rec = tp.read_job(wd)
  rec["setting"] = dataclasses.asdict(job.setting)
  rec["overrides"] = overrides(job.setting, config.model.num_blocks)
  start, train_seconds = tp.resume_point(wd)
  tp.close_interrupted_segment(wd, rec, start, train_seconds)
  print(f"\n=== train {job.setting.name}: epoch {start:g} -> {epochs:g}", flush=True)
  t0, failed = time.time(), None
  # Written before training: a segment killed before its end (a session's end, a crash)
  # is closed by the next run_train from this entry (tp.close_interrupted_segment).
  rec["running"] = {"epochs_from": start, "started": t0,
                    "train_seconds_before": train_seconds, **provenance(commit, config)}
  tp.write_job(wd, rec)
  try:
    train(config, wd, data)
  except NonFiniteError as e:  # recorded; the grid scores what the run reached
    failed = str(e)
  done, _ = tp.valid_curve(wd)
  reached = epochs if failed is None else (float(done.max()) if len(done) else 0.0)
  del rec["running"]
  rec["train"].append({"epochs_from": start, "epochs_to": reached,
                       "seconds": time.time() - t0, **provenance(commit, config)})
  if failed:
    rec["failed"] = {"epoch": reached, "message": failed}
  tp.write_job(wd, rec)


def run_eval(p, job, root: str, data, commit: str, deadline=None) -> bool:
  """Evaluates `job`; False if it paused at `deadline` (its finished images are kept in
  the workdir, and the next run resumes it)."""
  wd = tp.workdir(root, job.setting)
  config = with_kernels(job_config(p, job), wd)
  k, subset = job.num_samples, job.num_images is not None
  pattern = [os.path.join(wd, f"eval_test_K{k}.json"), os.path.join(wd, f"eval_test_K{k}_*")]
  if subset:
    clash = [f for g in pattern for f in glob.glob(g)]
    if clash:
      raise FileExistsError(f"{wd} holds {clash}, which the evaluation of the first "
                            f"{job.num_images} test images would overwrite")
    data = data._replace(test_binary=data.test_binary[:job.num_images],
                         test_images=data.test_images[:job.num_images])
  print(f"\n=== eval {job.setting.name}: K={k} on {len(data.test_binary)} test images",
        flush=True)
  t0 = time.time()
  try:
    summary = score(config, wd, data, deadline)
  except likelihood.EvaluationPaused as paused:
    print(f"paused: {paused}", flush=True)
    rec = tp.read_job(wd)  # this run's share, for the evaluation's cost once it finishes
    rec.setdefault("evals_paused", {}).setdefault(job.eval_key, []).append(
        {"seconds": time.time() - t0, "images": paused.done - paused.resumed,
         **provenance(commit, config)})
    tp.write_job(wd, rec)
    return False
  seconds = time.time() - t0
  if subset:
    out = tp.eval_dir(wd, job.num_images)
    os.makedirs(out, exist_ok=True)
    for f in (f for g in pattern for f in glob.glob(g)):
      shutil.move(f, os.path.join(out, os.path.basename(f)))
  rec = tp.read_job(wd)
  resumed = int((summary or {}).get("resumed_images", 0))
  earlier = rec.get("evals_paused", {}).pop(job.eval_key, [])
  if not rec.get("evals_paused"):
    rec.pop("evals_paused", None)
  # One segment per run that scored images (earlier ones paused; unused if nothing was
  # read back, e.g. the model was trained again): its seconds and the images it scored.
  segments = (earlier if resumed else []) + [
      {"seconds": seconds, "images": len(data.test_binary) - resumed,
       **provenance(commit, config)}]
  rec["evals"][job.eval_key] = {
      "num_samples": k, "report_k": job.report_k, "num_images": len(data.test_binary),
      "trained_epochs": tp.trained_epochs(rec),
      "seconds": sum(s["seconds"] for s in segments), "segments": segments,
      **provenance(commit, config)}
  tp.write_job(wd, rec)
  return True


# --------------------------------------------------------------------------- costs


def job_label(job) -> str:
  """'train -> 31 ep' or 'eval K=1000 x 10000 img': what a job does, for log lines."""
  if job.trains:
    return f"train -> {job.epochs or PLAN_ASSUMED_EPOCHS:g} ep"
  return f"eval K={job.num_samples} x {job.num_images or 10_000} img"


def job_seconds(job, root: str, epoch_s, sps, have: Optional[float] = None) -> float:
  """Estimated seconds `job` still needs: the epochs left (from `have`, default what its
  workdir holds) at epoch_s(row), or the images left (a paused evaluation's saved ones
  off) at sps(row) decoder samples/s plus start-up. A job whose setting waits for the
  grid counts its pilot's epochs only through `have`."""
  if job.trains:
    if have is None:
      have = (tp.trained_epochs(tp.read_job(tp.workdir(root, job.setting)))
              if job.setting else 0.0)
    return max(0.0, (job.epochs or PLAN_ASSUMED_EPOCHS) - have) * epoch_s(job.row)
  n = job.num_images or 10_000
  saved = 0 if job.setting is None else likelihood.saved_images(  # a paused one's
      mnist_family.resume_path(tp.workdir(root, job.setting), job.num_samples, "best", n))
  return job.num_samples * (n - saved) / sps(job.row) + EVAL_OVERHEAD_S


def rates(root: str, pilot_root: str):
  """(seconds per epoch of `row`, decoder samples per second of `row`) functions: measured
  for the row, else the median of the measured rows (scaled by the rows' relative cost),
  else the flags."""
  epoch_s, eval_sps = tp.measured_rates(root, pilot_root)
  cost = lambda r: tp.RELATIVE_EPOCH_COST.get(r, 1.0)
  base_e = (float(np.median([s / cost(r) for r, s in epoch_s.items()])) if epoch_s
            else FLAGS.epoch_seconds)
  base_s = float(np.median(list(eval_sps.values()))) if eval_sps else FLAGS.eval_samples_per_s
  return (lambda row: epoch_s.get(row, base_e * cost(row)),
          lambda row: eval_sps.get(row, base_s))


def print_plan(p: tp.Protocol, root: str, pilot_root: str, budget_note: str,
               records: str) -> None:
  with table_records.merged_root(root, table_records.matching(root, records)) as (
      view, _):
    jobs = tp.plan(p, view)
    epoch_s, sps = rates(view, pilot_root)
    finished = [tp.is_finished(j, jobs, root, view) for j in jobs]
  epochs_now, seen = {}, {}
  left = release = 0.0
  print(f"root {root}; budget {budget_note}; {len(jobs)} jobs\n"
        f"{'#':>3}  {'stage':8} {'entry':24} {'workdir':32} {'work':18} {'est min':>8} "
        f"{'cum h':>6}  status")
  for i, (job, done) in enumerate(zip(jobs, finished), 1):
    name = job.setting.name if job.setting else f"({job.entry} s{job.seed}: after grid)"
    key = (job.trains, name, job.epochs if job.trains else job.eval_key)
    work = job_label(job).split(" ", 1)[1]
    if job.trains:
      target = job.epochs or PLAN_ASSUMED_EPOCHS
      if job.setting:
        have = epochs_now.setdefault(name, tp.trained_epochs(tp.read_job(
            tp.workdir(root, job.setting))))
      else:  # seed 0 continues its grid pilot (a row of from_crvae_grid has none)
        have = (p.grid_epochs if job.seed == 0 and job.stage == "train"
                and job.row not in p.from_crvae_grid else 0.0)
      est = job_seconds(job, root, epoch_s, sps, have)
      if job.setting and (not done or tp.is_done(job, root)):  # (not: a record's run)
        epochs_now[name] = max(have, target)
    else:
      est = job_seconds(job, root, epoch_s, sps)
    if key in seen:
      status, est = f"same as #{seen[key]}", 0.0
    else:
      seen[key] = i
      status = ("done" if done else "ready" if tp.is_ready(job, p, root) else
                "waits: grid" if job.setting is None else
                "waits: budget" if not p.num_epochs else "waits: training")
    est = 0.0 if done else est
    left += est
    release += est if job.entry.startswith("release:") else 0.0
    print(f"{i:>3}  {job.stage:8} {job.entry:24} {name:32} {work:18} {est / 60:8.0f} "
          f"{left / 3600:6.1f}  {status}")
  print(f"\nestimated time left: {left / 3600:.1f} h, of which the release's recipe "
        f"{release / 3600:.1f} h (train: measured s/epoch per row where a run finished, "
        "else --epoch_seconds x relative cost; eval: measured samples/s, else "
        "--eval_samples_per_s)")


# ---------------------------------------------------------------------------- runner


def now() -> float:
  """The --stop_after_minutes clock (seconds; tests replace it)."""
  return time.monotonic()


def fit_to_time_left(ready, jobs, root, epoch_s, sps, left: float):
  """--stop_after_minutes: (job, epochs, deadline) to run in the `left` seconds, or None
  (stop; printed why). Whole jobs: the first ready job whose estimate, with its
  evaluations, fits; an evaluation gets a deadline (an estimate can be wrong: it pauses
  rather than overruns). --cut_to_fit: the next job, its training cut to whole epochs
  that fit, its evaluation paused at the limit (resumed in the next run)."""
  job = ready[0]
  if not FLAGS.cut_to_fit:
    # A model's training counts with its evaluations: trained but not evaluated, it is
    # trained again if the root is lost (table_protocol.is_finished).
    evals_of = lambda j: ([e for e in jobs if not e.trains and e.setting == j.setting]
                          if j.stage == "train" else [])
    cost = {id(j): sum(job_seconds(x, root, epoch_s, sps) for x in [j, *evals_of(j)])
            for j in ready}
    label = lambda j: job_label(j) + (" and its evaluations" if evals_of(j) else "")
    fits = [j for j in ready if cost[id(j)] <= left - EVAL_BATCH_MARGIN_S]
    if not fits:
      window = FLAGS.stop_after_minutes * 60 - EVAL_BATCH_MARGIN_S
      never = (f"; it fits in no run of --stop_after_minutes={FLAGS.stop_after_minutes:g}: "
               f"give it --cut_to_fit (cut work, whole training epochs or scored images, "
               f"resumes in the next run from a --root that survives) or a longer limit"
               if cost[id(job)] > window else "")
      print(f"stopping: no ready job fits in the {max(left, 0) / 60:.0f} minutes left "
            f"before --stop_after_minutes (next: {job.setting.name}, {label(job)}, "
            f"about {cost[id(job)] / 60:.0f} min){never}", flush=True)
      return None
    if fits[0] is not job:
      print(f"\n{job.setting.name} ({label(job)}, about {cost[id(job)] / 60:.0f} min) "
            f"does not fit in the {left / 60:.0f} minutes left; running "
            f"{fits[0].setting.name} ({label(fits[0])}) first", flush=True)
    job = fits[0]
    return job, job.epochs, (None if job.trains
                             else time.monotonic() + left - EVAL_BATCH_MARGIN_S)
  if job.trains:
    have = tp.trained_epochs(tp.read_job(tp.workdir(root, job.setting)))
    epochs = min(job.epochs, math.floor(have + left / epoch_s(job.row)))
    if epochs <= have:
      print(f"stopping: the next epoch of {job.setting.name} would pass "
            f"--stop_after_minutes", flush=True)
      return None
    return job, epochs, None
  if left < MIN_EVAL_MINUTES * 60:
    print(f"stopping: less than {MIN_EVAL_MINUTES:g} minutes left for evaluating "
          f"{job.setting.name} before --stop_after_minutes", flush=True)
    return None
  return job, job.epochs, time.monotonic() + left - EVAL_BATCH_MARGIN_S


def run(p: tp.Protocol, root: str, pilot_root: str, output: str, commit: str,
        records: str) -> None:
  t_start, n, data, last = now(), 0, None, None
  while FLAGS.max_jobs is None or n < FLAGS.max_jobs:
    with table_records.merged_root(root, table_records.matching(root, records)) as (
        view, _):
      tp.freeze_grid_scores(p, view, root)  # a grid choice, once made, stays made
      every = tp.plan(p, view)
      jobs = [j for j in every if FLAGS.stage in ("all", j.stage)
              and not tp.is_finished(j, every, root, view)]
      epoch_s, sps = rates(view, pilot_root)
    ready = [j for j in jobs if tp.is_ready(j, p, root)]
    if not ready:
      waiting = sorted({j.entry for j in jobs})
      print("nothing left to run" + (f"; waiting: {waiting}" if waiting else ""), flush=True)
      break
    job, epochs, deadline = ready[0], ready[0].epochs, None
    if FLAGS.stop_after_minutes is not None:
      chosen = fit_to_time_left(ready, jobs, root, epoch_s, sps,
                                left=FLAGS.stop_after_minutes * 60 - (now() - t_start))
      if chosen is None:
        break
      job, epochs, deadline = chosen
    if (job, epochs) == last:
      raise RuntimeError(f"{job} did not finish when run; see its workdir's job.json")
    last = (job, epochs)
    data = data or load_data(job_config(p, job))
    if job.trains:
      run_train(p, job, root, data, epochs, commit)
    elif not run_eval(p, job, root, data, commit, deadline):
      break  # paused at --stop_after_minutes
    n += 1
    try:  # records or a report that cannot be written must not stop a background run
      report(p, root, pilot_root, output, commit, records)
    except Exception:  # pylint: disable=broad-except
      logging.warning("records or report failed:\n%s", traceback.format_exc())


def report(p, root, pilot_root, output, commit, records) -> None:
  """Copies every workdir's records (unless records is '' or of another protocol), then
  writes the report."""
  records = table_records.matching(root, records)
  if records and os.path.isdir(root):
    with table_records.merged_root(root, records) as (view, _):
      tp.freeze_grid_scores(p, view, root)  # the last grid run's too
  if records:
    table_records.save_all(root, records)
  with table_records.merged_root(root, records) as (view, from_records):
    paths = table_report.write_report(
        p, view, pilot_root, output, commit=commit, note=FLAGS.note,
        root_label=root, records=records, from_records=from_records,
        command="python -m experiments.mnist_table --stage=report" + "".join(
            f" --{k}={FLAGS[k].value}" for k in ("root", "pilot_root", "output", "scale",
                                                   "records") if FLAGS[k].present))
  print(f"wrote {', '.join(paths)}", flush=True)


def budget(pilot_root: str, saved) -> tuple:
  """(epochs or None, how it was decided): --num_epochs, else protocol.json, else the
  rule on the VAE pilot curve."""
  if FLAGS.num_epochs is not None:
    return FLAGS.num_epochs, "--num_epochs"
  if saved:
    return saved, "protocol.json"
  rule = tp.pilot_budget(pilot_root)
  return (float(rule), "the pilot-curve rule") if rule else (None, "undecided")


def check_protocol_file(root: str, p: tp.Protocol, write: bool) -> None:
  """Refuse a root whose runs used other numbers; record this protocol's."""
  path = os.path.join(root, "protocol.json")
  mine = {k: v for k, v in dataclasses.asdict(p).items()
          if k in ("scale", "lrs", "grid_epochs", "beta", "num_epochs", "from_crvae_grid",
                   "release_images")}
  mine["lrs"], mine["from_crvae_grid"] = list(mine["lrs"]), sorted(mine["from_crvae_grid"])
  mine["release_images"] = mine["release_images"] or 0  # 0: all test images
  saved = tp.read_json(path) if os.path.exists(path) else {}
  clash = {k: (saved[k], v) for k, v in mine.items()
           if saved.get(k) is not None and v is not None and saved[k] != v}
  if clash:
    raise app.UsageError(f"{path} holds runs with other numbers {clash} (saved, now): "
                         "use another --root, or the saved values")
  if write:
    os.makedirs(root, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
      json.dump({**saved, **{k: v for k, v in mine.items() if v is not None}}, f, indent=2)


@contextlib.contextmanager
def root_lock(root: str):
  """Held while this process runs jobs on `root`: a second runner on it is refused."""
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, ".lock"), "w", encoding="utf-8") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as e:
      raise app.UsageError(f"another mnist_table process runs on {root}") from e
    yield


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  root = FLAGS.root or tp.beside_checkout(f"mnist_table_{FLAGS.scale}")
  pilot_root = FLAGS.pilot_root or tp.beside_checkout("mnist_pilots")
  output = FLAGS.output or os.path.join(
      REPO, "results", "mnist_table.md" if FLAGS.scale == "cpu" else "mnist_table_paper.md")
  records = FLAGS.records if FLAGS.records is not None else os.path.join(
      REPO, "results", "mnist_table_records" if FLAGS.scale == "cpu"
      else "mnist_table_paper_records")
  path = os.path.join(root, "protocol.json")
  saved = tp.read_json(path) if os.path.exists(path) else {}
  epochs, how = budget(pilot_root, saved.get("num_epochs"))
  try:
    lrs = tuple(float(x) for x in FLAGS.lrs)
  except ValueError as e:
    raise app.UsageError(f"--lrs={','.join(FLAGS.lrs)}: {e}") from e
  if FLAGS.stage == "report" and not os.path.isdir(root) and not (
      records and os.path.isdir(records)):
    raise app.UsageError(f"nothing to report: no --root {root} and no --records "
                         f"{records or '(off)'}")
  try:
    p = tp.Protocol(
        rows=tuple(FLAGS.rows), scale=FLAGS.scale, lrs=lrs,
        grid_epochs=FLAGS.grid_epochs, num_epochs=epochs, num_seeds=FLAGS.num_seeds,
        seeded_rows=tuple(FLAGS.seeded_rows), other_lstm_seeds=FLAGS.other_lstm_seeds,
        num_samples=FLAGS.num_samples, k_curve_rows=tuple(FLAGS.k_curve_rows),
        k_curve_samples=FLAGS.k_curve_samples, k_curve_images=FLAGS.k_curve_images,
        from_crvae_grid=tuple(r for r in FLAGS.from_crvae_grid if r), release=FLAGS.release,
        release_images=FLAGS.release_images or None)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  check_protocol_file(root, p, write=False)
  if FLAGS.plan:
    print_plan(p, root, pilot_root, f"{epochs:g} epochs ({how})" if epochs else
               f"undecided (costs assume {PLAN_ASSUMED_EPOCHS:g} epochs)", records)
    return
  commit = git_commit()  # the code this process runs (read once, at start)
  launch.configure_logging()
  launch.enable_compilation_cache(FLAGS.compilation_cache_dir)
  if FLAGS.stage != "report":
    with root_lock(root):
      check_protocol_file(root, p, write=True)
      print(f"root {root}; budget: {epochs and f'{epochs:g} epochs'} ({how}); code "
            f"{commit}", flush=True)
      run(p, root, pilot_root, output, commit, records)
  report(p, root, pilot_root, output, commit, records)


if __name__ == "__main__":
  host_memory.reexec_with_hugepages()
  launch.run(main, more_errors=(tp.RecordError,))
