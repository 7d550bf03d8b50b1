"""Guards of a training loop: stop signals that save before exiting, and the watch that
skips non-finite steps and stops a run after too many in a row."""

import os
import signal
import threading

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils


def keep_if(ok: jax.Array, new, old):
  """`new` where the [] bool `ok` holds, else `old`, leaf by leaf: the in-step half of
  the non-finite guard (a step whose loss or gradient is not finite keeps its state)."""
  return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)


def all_finite(*scalars) -> jax.Array:
  """[] bool: every one of `scalars` (losses, gradient norms) is finite; the `ok` of
  `keep_if` in every train step."""
  ok = jnp.isfinite(scalars[0])
  for x in scalars[1:]:
    ok = ok & jnp.isfinite(x)
  return ok


class NonFiniteError(RuntimeError):
  """Training stopped: too many consecutive steps had a non-finite loss or gradient."""


class StopSignals:
  """While active, SIGTERM/SIGINT only set `.received`; the loop asks `at_step(step)`
  after every step and, given a signal, saves and exits.

  In a multi-process run the processes must stop after the same step (a save is a
  collective operation), so SIGTERM is left to JAX's preemption service: a notice to any
  process is shared, all agree on a step, and `at_step` returns SIGTERM there. SIGINT
  (Ctrl-C) keeps its default there: it interrupts at once, without a save.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.received, self._old = None, {}
    self.multi_process = jax.process_count() > 1

  def __enter__(self):
    if threading.current_thread() is threading.main_thread() and not self.multi_process:
      for sig in self.SIGNALS:
        self._old[sig] = signal.signal(sig, self._handle)
    return self

  def at_step(self, step: int):
    """The signal to stop on after `step` (call it after every step), or None."""
    if self.multi_process:
      reached = multihost_utils.reached_preemption_sync_point(step)
      return signal.SIGTERM if reached else None
    return self.received

  def exit_if_asked(self, step: int, total_steps: int, save) -> None:
    """After `step` of `total_steps`: if a stop signal is due, `save()` a checkpoint of
    this step and leave (KeyboardInterrupt for SIGINT, else SystemExit(128 + signal))."""
    sig = self.at_step(step)
    if sig is None or step >= total_steps:
      return
    save()
    logging.warning(f"{signal.Signals(sig).name}: saved a checkpoint at step {step}; "
                    "rerun the same command to resume")
    if sig == signal.SIGINT:
      raise KeyboardInterrupt
    raise SystemExit(128 + sig)

  def _handle(self, signum, frame):
    del frame
    self.received = signum

  def __exit__(self, *exc):
    for sig, handler in self._old.items():
      signal.signal(sig, handler)


class NonFiniteWatch:
  """Counts skipped (non-finite) steps from each step's metrics, one step behind the
  dispatch so the host does not wait for the device; raises after `limit` in a row."""

  def __init__(self, limit: int, workdir: str, last_saved=None):
    self.limit, self.workdir = limit, workdir
    self.pending, self.in_a_row, self.total, self.last_saved = None, 0, 0, last_saved

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
    logging.warning(f"step {step + 1}: non-finite {', '.join(bad)}; update skipped "
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
