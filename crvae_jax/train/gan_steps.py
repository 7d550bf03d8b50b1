"""The step loop shared by the GAN trainers (Stage1 `gan_loop`, Stage2 `stage2_loop`).

Each trainer builds its own state, step and grids; `resume_or_init` and `run_steps` do
the rest the same way for both: resume from the latest checkpoint (or start and write
config.json), then per step: the data-parallel update, the non-finite watch, averaged
metrics every `train.log_every_steps` (metrics.jsonl, TensorBoard, the progress bar),
a checkpoint every `train.checkpoint_every_steps`, grids every
`train.sample_every_steps`, and a save-and-exit on SIGTERM/SIGINT. The last step always
logs, saves and draws.
"""

import json
import os
import time
from typing import Callable, Optional

import jax
from tqdm import tqdm

from crvae_jax.train import checkpoints, guards, parallel
from crvae_jax.train.metrics import mean_metrics


def resume_or_init(ckpts: checkpoints.Checkpoints, init_state: Callable, config,
                   workdir: str, *, main_process: bool, log):
  """(state, restored step or None): the latest checkpoint of `workdir`, or
  init_state() (and config.json written) when there is none."""
  state, restored_step = ckpts.restore(init_state(abstract=True))
  if state is not None:
    log(f"Resuming from step {restored_step} in {workdir}")
    return state, restored_step
  if main_process:
    checkpoints.write_config(workdir, config)
  return init_state(), restored_step


SUMMARY_FILE = "train_summary.json"


def finished_summary(workdir: str, start: int, num_steps: int,
                     ckpts: checkpoints.Checkpoints, log) -> Optional[dict]:
  """The saved summary (and `ckpts` closed) when the run already reached num_steps and
  wrote it; None when there is training to do."""
  path = os.path.join(workdir, SUMMARY_FILE)
  if start < num_steps or not os.path.exists(path):
    return None
  log(f"{workdir} is trained to step {start} (train.num_steps={num_steps}); nothing to "
      "do (raise train.num_steps to train on)")
  ckpts.close()
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def write_summary(workdir: str, summary: dict) -> None:
  """<workdir>/train_summary.json (process 0 only)."""
  with open(os.path.join(workdir, SUMMARY_FILE), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=2)


def run_steps(step: Callable, state, batches, *, mesh, train_config, workdir: str,
              ckpts: checkpoints.Checkpoints, writer, restored_step, start: int,
              t_start: float, log, main_process: bool, desc: str,
              on_log: Callable, draw: Callable):
  """Runs steps start .. train.num_steps - 1; returns (state, last logged summary,
  number of skipped non-finite steps).

  step(state, sharded batch) -> (state, metrics); batches: this process's rows of each
  global batch; on_log(summary, num_steps) -> progress-bar fields, called with each
  averaged summary (examples_per_s included) over num_steps steps; draw(state, tag)
  writes the grids. `ckpts` and `writer` are closed on return.
  """
  t = train_config
  history, summary, n_interval, t_interval = [], {}, 0, time.time()
  watch = guards.NonFiniteWatch(t.max_nonfinite_steps, workdir, log)
  watch.last_saved = restored_step
  bar = tqdm(total=t.num_steps, initial=start, unit="step", desc=desc,
             disable=not main_process)
  try:
    with guards.StopSignals() as stop:
      for i, batch in zip(range(start, t.num_steps), batches):
        state, metrics = step(state, parallel.from_process_rows(mesh, batch, t.batch_size))
        watch.push(i, metrics)
        history.append(metrics)
        n_interval += t.batch_size
        done = i + 1
        if i == start:
          jax.block_until_ready(metrics)
          log(f"first step done {time.time() - t_start:.1f}s after start (incl. compile)")
          t_interval, n_interval = time.time(), 0
        if done % t.log_every_steps == 0 or done == t.num_steps:
          summary = mean_metrics(history)
          summary["examples_per_s"] = n_interval / max(time.time() - t_interval, 1e-9)
          postfix = on_log(summary, len(history))
          writer.write(done, summary)
          bar.set_postfix(**postfix)
          t_interval, n_interval, history = time.time(), 0, []
        if done % t.checkpoint_every_steps == 0 or done == t.num_steps:
          watch.flush()
          ckpts.save_latest(done, state)
          watch.last_saved = done
        if done % t.sample_every_steps == 0 or done == t.num_steps:
          draw(state, f"{done:07d}")
        bar.update(1)
        stop.exit_if_asked(done, t.num_steps,
                           lambda: ckpts.save_now(done, state, watch.last_saved), log)
      watch.flush()
  finally:
    bar.close()
    ckpts.wait()
    ckpts.close()
    writer.close()
  return state, summary, watch.total
