"""Preemption: a real training process stopped by SIGTERM, then by SIGINT (Ctrl-C),
killed by SIGKILL, then killed while writing a checkpoint, and restarted each time with
the same command, ends bit-identical to an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np

from conftest import make_tiny_config, make_tiny_data
from crvae_jax.families import mnist as mnist_family

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The child is the same training call a user's script would make; the test's fake
# devices (XLA_FLAGS) and compilation cache are inherited through the environment.
# With KILL_IN_SAVE_AT=N in its environment the child SIGKILLs itself right after
# starting the (asynchronous) save of the latest checkpoint at step >= N: a kill while
# Orbax is still writing it. The child finds the repository and tests/ through
# PYTHONPATH (`_start`) and shows crvae_jax's INFO messages, as experiments.main does.
CHILD = f"""
import os, signal, sys
from absl import logging
logging.set_verbosity(logging.INFO)
from test_preemption import preemption_config
from conftest import make_tiny_data
from crvae_jax.families import mnist as mnist_family
from crvae_jax.train import checkpoints
kill_at = int(os.environ.get("KILL_IN_SAVE_AT", "0"))
if kill_at:
  save = checkpoints.Checkpoints.save_latest
  def save_then_die(self, step, state):
    save(self, step, state)
    if step >= kill_at:
      os.kill(os.getpid(), signal.SIGKILL)
  checkpoints.Checkpoints.save_latest = save_then_die
mnist_family.train_and_evaluate(preemption_config(), sys.argv[1], data=make_tiny_data())
"""
TIMEOUT_S = 240


def preemption_config():
  config = make_tiny_config()
  config.train.num_epochs = 4.0  # 16 steps
  config.train.eval_every_epochs = 0.5  # a checkpoint every 2 steps
  config.train.sample_every_epochs = 3.0
  return config


def _start(workdir, **extra_env):
  env = dict(os.environ, **extra_env,
             JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
             PYTHONPATH=os.pathsep.join([REPO, os.path.join(REPO, "tests"),
                                         os.environ.get("PYTHONPATH", "")]))
  return subprocess.Popen([sys.executable, "-c", CHILD, workdir], env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _saved_steps(workdir):
  path = os.path.join(workdir, "checkpoints")
  return [int(d) for d in os.listdir(path) if d.isdigit()] if os.path.isdir(path) else []


def _unfinished_saves(workdir):
  path = os.path.join(workdir, "checkpoints")
  return [d for d in os.listdir(path) if "tmp" in d]


def _signal_after(proc, workdir, sig, min_step):
  """Send `sig` once a checkpoint at >= min_step is complete; return (rc, output)."""
  deadline = time.time() + TIMEOUT_S
  while max(_saved_steps(workdir), default=0) < min_step:
    assert proc.poll() is None, proc.communicate()[0]
    if time.time() > deadline:
      proc.kill()
      raise AssertionError(f"no checkpoint >= {min_step} after {TIMEOUT_S}s")
    time.sleep(0.05)
  proc.send_signal(sig)
  out, _ = proc.communicate(timeout=TIMEOUT_S)
  return proc.returncode, out


def _finish(workdir):
  proc = _start(workdir)
  out, _ = proc.communicate(timeout=TIMEOUT_S)
  assert proc.returncode == 0, out
  return out


def test_sigterm_sigint_sigkill_and_kill_in_save_then_rerun_end_bit_identical(tmp_path):
  config, data = preemption_config(), make_tiny_data()
  straight = str(tmp_path / "straight")
  # The uninterrupted run validates, saves and draws samples only at its end: none of
  # these touch the training state (the preempted runs below do them every 2 steps),
  # so it must still end bit-identical, and it takes a third of the time.
  uninterrupted = config.copy_and_resolve_references()
  uninterrupted.train.eval_every_epochs = uninterrupted.train.num_epochs
  uninterrupted.train.sample_every_epochs = uninterrupted.train.num_epochs
  mnist_family.train_and_evaluate(uninterrupted, straight, data=data)

  work = str(tmp_path / "preempted")
  newer = lambda: max(_saved_steps(work), default=0) + 1  # a checkpoint this run wrote
  rc, out = _signal_after(_start(work), work, signal.SIGTERM, min_step=2)
  assert rc == 128 + signal.SIGTERM, out
  assert "SIGTERM: saved a checkpoint at step" in out, out
  # The run's time so far is recorded with the state it saved on the way out.
  with open(os.path.join(work, "train_time.json"), encoding="utf-8") as f:
    record = json.load(f)
  assert record["step"] == max(_saved_steps(work)) and record["invocations"] == 1, record
  assert record["seconds"] > 0, record
  rc, out = _signal_after(_start(work), work, signal.SIGINT, min_step=newer())  # Ctrl-C
  assert rc != 0 and "SIGINT: saved a checkpoint at step" in out, (rc, out)
  assert "KeyboardInterrupt" in out, out
  rc, out = _signal_after(_start(work), work, signal.SIGKILL, min_step=newer())
  assert rc == -signal.SIGKILL, out
  kill_at = newer() + 1  # the next checkpoint save after resuming
  assert kill_at < 16, _saved_steps(work)  # it really died mid-run
  proc = _start(work, KILL_IN_SAVE_AT=str(kill_at))
  out, _ = proc.communicate(timeout=TIMEOUT_S)
  assert proc.returncode == -signal.SIGKILL, out
  assert _unfinished_saves(work), os.listdir(os.path.join(work, "checkpoints"))
  assert max(_saved_steps(work)) < kill_at  # that save never became a checkpoint
  out = _finish(work)
  assert "Resuming from step" in out, out

  restore = lambda d: mnist_family.restore_variables(config, d, "latest")
  (_, a, step_a), (_, b, step_b) = restore(straight), restore(work)
  assert step_a == step_b == 16
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(a), jax.device_get(b))
