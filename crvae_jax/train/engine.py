"""The training engine every model family runs on: one loop, one resume, one guard.

A family (`crvae_jax.families`: MNIST, Stage1, Stage2) says what to build and how one
step goes (`Family`); `train` does the rest the same way for all of them:

- hold the workdir's lock (`workdir_lock`), refuse a workdir that holds another config;
- restore the latest checkpoint of <workdir>/checkpoints (resume), or initialise from
  train.seed and write config.json;
- per step: the family's data-parallel update on its next global batch, the
  non-finite watch (`guards.NonFiniteWatch`), averaged metrics every `log_every` steps
  (metrics.jsonl, TensorBoard, the progress bar); every `checkpoint_every` steps the
  family's validation (if it has one), the latest checkpoint and the best one by the
  validation metric (if the family keeps one); the family's pictures every
  `sample_every` steps; a save-and-exit on SIGTERM/SIGINT (`guards.StopSignals`). The
  last step always logs, saves and draws;
- train_summary.json at the end; a workdir already trained to its last step returns
  its saved summary. Its train_seconds and skipped_steps count every invocation of the
  run (train_time.json, updated at every checkpoint, carries them across resumes: time
  after a killed invocation's last checkpoint is not counted, its steps are redone).

A run is a function of (config, step): batch order and every random draw follow the
step, so a resumed run continues exactly where the previous one stopped.
"""

import abc
import dataclasses
import json
import os
import time
from typing import Iterator, Optional

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tqdm import tqdm

from crvae_jax import distributed, sharding
from crvae_jax.train import checkpoints, guards, workdir_lock
from crvae_jax.train.guards import NonFiniteError  # noqa: F401 (re-exported)
from crvae_jax.train.metrics import MetricWriter, mean_metrics

SUMMARY_FILE = "train_summary.json"
TIME_FILE = "train_time.json"


@dataclasses.dataclass
class RunTime:
  """Wall seconds and skipped non-finite steps over every invocation of a run, as of
  its last checkpoint (<workdir>/train_time.json)."""
  seconds: float = 0.0
  skipped_steps: int = 0
  invocations: int = 0

  @classmethod
  def read(cls, workdir: str, restored_step: Optional[int]) -> "RunTime":
    """The record of `workdir`, for a run resumed from `restored_step` (None: a fresh
    start, which counts from zero). A record of another step (the latest checkpoint
    was set aside and an earlier one restored) is kept, with a warning; a damaged one
    is replaced, with a warning (it only holds statistics)."""
    path = os.path.join(workdir, TIME_FILE)
    if restored_step is None or not os.path.exists(path):
      return cls()
    try:
      with open(path, encoding="utf-8") as f:
        saved = json.load(f)
      record = cls(float(saved["seconds"]), int(saved["skipped_steps"]),
                   int(saved["invocations"]))
    except (OSError, ValueError, KeyError, TypeError) as e:
      logging.warning("%s cannot be read (%s): the run's training time is counted from "
                      "this invocation on", path, e)
      return cls()
    if saved.get("step") != restored_step:
      logging.warning("%s was written at step %s but the run resumes from step %s: its "
                      "time includes steps that will be trained again", path,
                      saved.get("step"), restored_step)
    return record

  def plus(self, seconds: float, skipped: int) -> "RunTime":
    """This record with one more invocation's seconds and skipped steps."""
    return RunTime(self.seconds + seconds, self.skipped_steps + skipped,
                   self.invocations + 1)

  def write(self, workdir: str, step: int) -> None:
    if distributed.is_main():
      checkpoints.write_file_atomic(os.path.join(workdir, TIME_FILE), json.dumps(
          dict(dataclasses.asdict(self), step=step), indent=2))


@dataclasses.dataclass(frozen=True)
class Schedule:
  """When things happen, in steps (the last step always logs, saves and draws)."""
  total_steps: int
  log_every: int
  checkpoint_every: int  # validation (if any) and the latest checkpoint
  sample_every: int
  steps_per_epoch: Optional[int] = None  # logs the epoch next to the step if given


class Family(abc.ABC):
  """One model family on the engine, built from its config for one run.

  Construction loads nothing heavy that a config check should precede: call
  `check(config, num_devices)` first (experiments/main.py does). `setup(workdir)` is
  called by the engine inside the workdir's lock, before the restore.
  """

  desc = "train"  # the progress bar's label
  keeps_best = False  # a best/ checkpoint by validation[best_metric] (higher is better)
  best_metric = "elbo"

  def __init__(self, config, mesh: Optional[Mesh] = None):
    self.config = config
    self.mesh = mesh or sharding.make_mesh(config.train.num_devices)

  @staticmethod
  @abc.abstractmethod
  def check(config, num_devices: int, training: bool = True) -> None:
    """Raise config_checks.ConfigError for an impossible value (before anything runs)."""

  @abc.abstractmethod
  def init_state(self, abstract: bool = False):
    """Fresh training state from train.seed (host arrays); abstract=True: only shapes
    and dtypes (jax.eval_shape, nothing compiled), e.g. as a restore target."""

  @abc.abstractmethod
  def schedule(self) -> Schedule:
    """Steps of the run and the intervals of logs, checkpoints and pictures."""

  @abc.abstractmethod
  def batches(self, start: int) -> Iterator[np.ndarray]:
    """This process's rows (`sharding.process_rows`) of the global batches of steps
    start, start + 1, ... (train.batch_size rows each, whole on one host)."""

  @abc.abstractmethod
  def make_step(self):
    """`step(state, global batch) -> (state, metrics)`, jitted, `state` donated;
    metrics hold a [] float 'skipped' (1: the update was not applied)."""

  def setup(self, workdir: str) -> None:
    """Work before the restore that needs the workdir (e.g. pin a frozen model)."""
    del workdir

  def describe(self, state) -> str:
    """The line logged when the run starts (model, sizes, devices)."""
    del state
    return ""

  def progress(self, summary: dict, num_steps: int) -> dict:
    """Progress-bar fields of one logged summary (averaged over num_steps steps)."""
    del summary, num_steps
    return {}

  def validate(self, state) -> dict:
    """Validation metrics at a checkpoint ({}: the family has none)."""
    del state
    return {}

  def draw(self, state, workdir: str, tag: str) -> None:
    """Write the pictures of `state` into <workdir>/samples (process 0)."""
    del state, workdir, tag

  def summarize(self, last_train: dict, last_valid: dict) -> dict:
    """The run's summary: by default the last validation metrics, else the last logged
    train metrics (scalars)."""
    source = last_valid or last_train
    return {k: float(v) for k, v in source.items() if np.ndim(v) == 0}


def num_params(tree) -> int:
  """How many numbers the arrays of `tree` hold (for the start line)."""
  return sum(x.size for x in jax.tree.leaves(tree))


def replicated_target(mesh: Mesh, abstract_state):
  """ShapeDtypeStructs of a state, replicated over the mesh: restored arrays land on
  every device of the (global) mesh."""
  replicated = NamedSharding(mesh, P())
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                      abstract_state)


def restore_or_init(family: Family, ckpts: checkpoints.Checkpoints, workdir: str):
  """(state replicated over the mesh, restored step or None): the latest checkpoint of
  `workdir`, or the family's initial state (and config.json written)."""
  state, restored_step = ckpts.restore(replicated_target(family.mesh,
                                                         family.init_state(abstract=True)))
  if state is not None:
    distributed.info(f"Resuming from step {restored_step} in {workdir}")
    return state, restored_step
  if distributed.is_main():
    checkpoints.write_config(workdir, family.config)
  return sharding.replicate(family.mesh, family.init_state()), None


def restore_trained(family: Family, workdir: str, which: str = "latest",
                    step: Optional[int] = None, *, replicated: bool = False):
  """(state, step) of `workdir`'s `which` checkpoint ('latest' or 'best'; `step`: that
  step), restored on the default device, or replicated over the family's mesh.

  Raises FileNotFoundError naming the workdir when it does not exist (nothing is
  created) or holds no such checkpoint.
  """
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"no such workdir: {workdir}")
  missing = FileNotFoundError(
      f"no '{which}' checkpoint{f' at step {step}' if step is not None else ''} in "
      f"{os.path.abspath(workdir)}: train first (--mode=train) or point --workdir at a "
      "trained run")
  if not os.path.isdir(os.path.join(workdir, "best" if which == "best" else "checkpoints")):
    raise missing  # (opening the checkpoint managers would create the folder)
  abstract = family.init_state(abstract=True)
  target = replicated_target(family.mesh, abstract) if replicated else abstract
  with checkpoints.Checkpoints(workdir, best=family.keeps_best) as ckpts:
    state, restored = ckpts.restore(target, which, step)
  if state is None:
    raise missing
  return state, restored


def saved_summary(workdir: str) -> Optional[dict]:
  path = os.path.join(workdir, SUMMARY_FILE)
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def train(family: Family, workdir: str) -> dict:
  """Train (or resume) `family` in `workdir`; returns its summary (also written to
  train_summary.json) with skipped_steps and train_seconds (over every invocation of
  the run, see RunTime) added."""
  t_start = time.time()
  config, mesh = family.config, family.mesh
  family.check(config, mesh.size)
  with workdir_lock.hold(workdir):  # one writer per workdir (creates it)
    checkpoints.refuse_other_config(workdir, config)
    family.setup(workdir)
    keep_every = config.train.get("keep_checkpoint_every_steps", 0)
    with checkpoints.Checkpoints(workdir, best=family.keeps_best,
                                 keep_every=keep_every) as ckpts:
      state, restored_step = restore_or_init(family, ckpts, workdir)
      start, sched = int(jax.device_get(state.step)), family.schedule()
      finished = saved_summary(workdir) if start >= sched.total_steps else None
      if finished is not None:
        distributed.info(f"{workdir} is trained to step {start} (of "
                         f"{sched.total_steps}); nothing to do (raise the number of steps "
                         "to train on)")
        return finished
      distributed.info(f"{family.describe(state)}; {mesh.size} device(s) "
                       f"({distributed.describe()}); {sched.total_steps} steps")
      before = RunTime.read(workdir, restored_step)
      if start >= sched.total_steps:  # killed after its last save, before its summary
        last_train, last_valid, skipped = {}, family.validate(state), 0
      else:
        last_train, last_valid, skipped = _run(family, state, start, sched, workdir,
                                               ckpts, restored_step, t_start, before)
    total = before.plus(time.time() - t_start, skipped)
    total.write(workdir, start if start >= sched.total_steps else sched.total_steps)
    out = family.summarize(last_train, last_valid)
    out.update(skipped_steps=total.skipped_steps, train_seconds=total.seconds,
               invocations=total.invocations)
    if distributed.is_main():
      checkpoints.write_file_atomic(os.path.join(workdir, SUMMARY_FILE),
                                    json.dumps(out, indent=2))
  return out


def _run(family: Family, state, start: int, sched: Schedule, workdir: str, ckpts,
         restored_step, t_start: float, before: RunTime):
  """Steps start .. total_steps - 1; returns (last logged train summary, last validation
  metrics, number of skipped non-finite steps). `before`: the run's time up to this
  invocation (train_time.json is rewritten at every checkpoint)."""
  config, mesh, main_process = family.config, family.mesh, distributed.is_main()
  batch_size, total = config.train.batch_size, sched.total_steps
  step_fn = family.make_step()
  writer = MetricWriter(workdir, enabled=main_process, resume_step=start)
  watch = guards.NonFiniteWatch(int(config.train.max_nonfinite_steps), workdir,
                                last_saved=restored_step)
  history, last_train, last_valid = [], {}, {}
  t_interval, n_interval = time.time(), 0
  bar = tqdm(total=total, initial=start, unit="step", desc=family.desc,
             disable=not main_process)

  def save_and_exit(done, state):  # on SIGTERM / SIGINT: the state and the time so far
    watch.flush()
    ckpts.save_now(done, state, watch.last_saved)
    before.plus(time.time() - t_start, watch.total).write(workdir, done)

  try:
    with guards.StopSignals() as stop:
      for step, rows in zip(range(start, total), family.batches(start)):
        state, metrics = step_fn(state, sharding.from_process_rows(mesh, rows, batch_size))
        watch.push(step, metrics)
        history.append(metrics)
        n_interval += batch_size
        done = step + 1
        if step == start:
          jax.block_until_ready(metrics)
          distributed.info(f"first step done {time.time() - t_start:.1f}s after start "
                           "(incl. compile)")
          t_interval, n_interval = time.time(), 0
        if done % sched.log_every == 0 or done == total:
          last_train = mean_metrics(history)  # "skipped": the fraction of skipped steps
          last_train["examples_per_s"] = n_interval / max(time.time() - t_interval, 1e-9)
          if sched.steps_per_epoch:
            last_train["epoch"] = done / sched.steps_per_epoch
          postfix = family.progress(last_train, len(history))
          writer.write(done, last_train)
          bar.set_postfix(**postfix)
          t_interval, n_interval, history = time.time(), 0, []
        if done % sched.checkpoint_every == 0 or done == total:
          watch.flush()
          last_valid = _checkpoint(family, state, done, sched, ckpts, writer)
          watch.last_saved = done
          before.plus(time.time() - t_start, watch.total).write(workdir, done)
        if done % sched.sample_every == 0 or done == total:
          family.draw(state, workdir, f"{done:07d}")
        bar.update(1)
        ckpts.check()  # a failed background save stops the run (CheckpointSaveError)
        stop.exit_if_asked(done, total, lambda: save_and_exit(done, state))
      watch.flush()
  finally:
    bar.close()
    writer.close()
  return last_train, last_valid, watch.total


def _checkpoint(family: Family, state, done: int, sched: Schedule, ckpts, writer) -> dict:
  """Validation (if the family has one), the latest checkpoint, the best one."""
  valid = family.validate(state)
  if valid:
    writer.write(done, valid, prefix="valid")
  ckpts.save_latest(done, state)
  if valid and family.keeps_best:
    if ckpts.save_best_if_better(done, state, valid[family.best_metric]):
      valid["is_best"] = 1.0
    epoch = f" (epoch {done / sched.steps_per_epoch:.2f})" if sched.steps_per_epoch else ""
    distributed.info(f"step {done}{epoch}: valid {family.best_metric.upper()} "
                     f"{valid[family.best_metric]:.2f} nats"
                     f"{' (best)' if valid.get('is_best') else ''}")
  return valid
