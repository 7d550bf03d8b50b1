"""Guards of a training loop: stop signals that save before exiting, and the watch that
skips non-finite steps and stops a run after too many in a row."""

import os
import signal
import threading

import jax
import numpy as np


class NonFiniteError(RuntimeError):
  """Training stopped: too many consecutive steps had a non-finite loss or gradient."""


class StopSignals:
  """While active, SIGTERM/SIGINT only set `.received` (the loop saves, then exits)."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.received, self._old = None, {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in self.SIGNALS:
        self._old[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    self.received = signum

  def __exit__(self, *exc):
    for sig, handler in self._old.items():
      signal.signal(sig, handler)


class NonFiniteWatch:
  """Counts skipped (non-finite) steps from each step's metrics, one step behind the
  dispatch so the host does not wait for the device; raises after `limit` in a row."""

  def __init__(self, limit: int, workdir: str, log):
    self.limit, self.workdir, self.log = limit, workdir, log
    self.pending, self.in_a_row, self.total, self.last_saved = None, 0, 0, None

  def push(self, step: int, metrics) -> None:
    """Check the previous step's metrics, then remember this one."""
    self.flush()
    self.pending = (step, metrics)

  def flush(self) -> None:
    if self.pending is None:
      return
    step, metrics = self.pending
    self.pending = None
    if float(jax.device_get(metrics["skipped"])) == 0.0:
      self.in_a_row = 0
      return
    self.in_a_row += 1
    self.total += 1
    values = jax.device_get(metrics)
    bad = [k for k, v in values.items() if k != "skipped" and not np.all(np.isfinite(v))]
    self.log(f"step {step + 1}: non-finite {', '.join(bad)}; update skipped "
             f"({self.in_a_row} in a row, {self.total} in this run)")
    if self.in_a_row >= self.limit:
      saved = ("none yet" if self.last_saved is None else
               f"step {self.last_saved} in {os.path.join(self.workdir, 'checkpoints')}")
      raise NonFiniteError(
          f"training stopped at step {step + 1}: {self.in_a_row} consecutive steps had "
          f"non-finite values ({', '.join(bad)}) and were skipped (limit "
          f"train.max_nonfinite_steps={self.limit}). Parameters were never updated with "
          f"them. Last good checkpoint: {saved}. Lower optim.learning_rate or inspect "
          "metrics.jsonl, then rerun to resume from that checkpoint.")
