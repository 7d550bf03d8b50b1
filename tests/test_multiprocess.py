"""Multi-host: two real processes on localhost (1 CPU device each, gloo collectives)
train a tiny crVAE, are preempted (SIGTERM to one of them), resume from their joint
checkpoint and evaluate, and end where one process with two devices and the same global
batch ends when it trains straight through."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from crvae_jax import distributed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 300  # per launch; the processes also give up joining after 60 s
# One process of a run: join (if there are several), train 2 epochs (8 steps, a
# checkpoint every 4), evaluate the latest checkpoint, and report what it holds. With
# TERM_AFTER=N, process 1 sends itself SIGTERM (a preemption notice) right after saving
# step N: JAX shares the notice, both processes save at the same later step and exit.
# The children find the repository and tests/ through PYTHONPATH (`_run`).
CHILD = f"""
import json, os, signal, sys, time
t0 = time.time()
process_id, num_processes = int(sys.argv[1]), int(sys.argv[2])
port, workdir = sys.argv[3], sys.argv[4]
from crvae_jax import distributed
if num_processes > 1:
  distributed.initialize(f"127.0.0.1:{{port}}", num_processes, process_id, timeout_s=60)
import jax
import numpy as np
from conftest import make_tiny_config, make_tiny_data
from absl import logging
from crvae_jax import sharding
from crvae_jax.families import mnist as mnist_family
from crvae_jax.train import checkpoints
logging.set_verbosity(logging.INFO)  # crvae_jax's messages, as experiments.main shows them
term_after = int(os.environ.get("TERM_AFTER", "0"))
if term_after and process_id == 1:
  save = checkpoints.Checkpoints.save_latest
  def save_then_term(self, step, state):
    save(self, step, state)
    if step == term_after:
      os.kill(os.getpid(), signal.SIGTERM)
  checkpoints.Checkpoints.save_latest = save_then_term
config, data = make_tiny_config(), make_tiny_data()
config.train.num_epochs = 2.0
mnist_family.train_and_evaluate(config, workdir, data=data)
summary = mnist_family.evaluate(config, workdir, data=data)
_, variables, step = mnist_family.restore_variables(config, workdir, "latest")
params = [sharding.to_host(x) for x in jax.tree.leaves(variables)]
np.savez(os.path.join(workdir, f"variables_{{process_id}}.npz"), *params)
with open(os.path.join(workdir, f"report_{{process_id}}.json"), "w") as f:
  json.dump({{"nll": summary["nll"], "neg_elbo": summary["neg_elbo"], "step": step,
             "devices": len(jax.devices()), "local_devices": jax.local_device_count(),
             "processes": jax.process_count(), "wall_s": time.time() - t0}}, f)
"""


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run(workdir, num_processes: int, devices_per_process: int, expect_rc: int = 0,
         child: str = CHILD, **extra_env):
  """Start the processes of one launch (each runs the script `child` with arguments
  process_id, num_processes, port, workdir), wait for all (bounded); return the wall
  time and their outputs."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", **extra_env,
             JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
             PYTHONPATH=os.pathsep.join([REPO, os.path.join(REPO, "tests"),
                                         os.environ.get("PYTHONPATH", "")]),
             XLA_FLAGS=os.environ["XLA_FLAGS"].replace(
                 "xla_force_host_platform_device_count=2",
                 f"xla_force_host_platform_device_count={devices_per_process}"))
  port = str(_free_port())
  t0 = time.time()
  procs = [subprocess.Popen([sys.executable, "-c", child, str(i), str(num_processes), port,
                             str(workdir)], env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
           for i in range(num_processes)]
  outputs = []
  try:
    for proc in procs:
      outputs.append(proc.communicate(timeout=max(1.0, t0 + TIMEOUT_S - time.time()))[0])
  except subprocess.TimeoutExpired:
    for proc in procs:
      proc.kill()
    tails = [proc.communicate()[0][-3000:] for proc in procs]
    pytest.fail(f"{num_processes}-process launch did not finish in {TIMEOUT_S} s:\n"
                + "\n".join(f"--- process {i}:\n{t}" for i, t in enumerate(tails)))
  for i, (proc, out) in enumerate(zip(procs, outputs)):
    assert proc.returncode == expect_rc, (
        f"process {i} of {num_processes}: exit code {proc.returncode}, expected "
        f"{expect_rc}:\n{out[-4000:]}")
  return time.time() - t0, outputs


def _report(workdir, process_id):
  with open(workdir / f"report_{process_id}.json", encoding="utf-8") as f:
    report = json.load(f)
  with np.load(workdir / f"variables_{process_id}.npz") as npz:
    return report, [npz[k] for k in sorted(npz.files, key=lambda k: int(k.split("_")[1]))]


def test_two_processes_preempted_resume_and_evaluate_like_one_process(tmp_path):
  one, two = tmp_path / "one_process", tmp_path / "two_processes"
  wall_one, _ = _run(one, num_processes=1, devices_per_process=2)
  wall_preempted, outputs = _run(two, num_processes=2, devices_per_process=1,
                                 expect_rc=128 + signal.SIGTERM, TERM_AFTER="4")
  saved = [line for line in outputs[0].splitlines() if "SIGTERM: saved" in line]
  assert len(saved) == 1, outputs[0][-3000:]
  stopped_at = int(saved[0].split("at step ")[1].split(";")[0])
  assert 4 <= stopped_at < 8  # both stopped after the same step (one save, below)
  assert sorted(int(d) for d in os.listdir(two / "checkpoints") if d.isdigit())[-1] == (
      stopped_at)
  wall_resumed, outputs = _run(two, num_processes=2, devices_per_process=1)
  print(f"\nwall time: 1 process x 2 devices {wall_one:.1f} s; 2 processes x 1 device "
        f"{wall_preempted:.1f} s (stopped after step {stopped_at}) + {wall_resumed:.1f} s "
        "(resumed to step 8, evaluated)")

  reference, ref_vars = _report(one, 0)
  assert (reference["processes"], reference["devices"]) == (1, 2)
  for process_id in (0, 1):
    report, variables = _report(two, process_id)
    assert (report["processes"], report["devices"], report["local_devices"]) == (2, 2, 1)
    assert report["step"] == reference["step"] == 8
    # Every process reports the same number, and it is the single-process number.
    np.testing.assert_allclose(report["nll"], reference["nll"], rtol=1e-5)
    np.testing.assert_allclose(report["neg_elbo"], reference["neg_elbo"], rtol=1e-5)
    assert len(variables) == len(ref_vars)
    for a, b in zip(variables, ref_vars):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

  # One logical checkpoint; files other than checkpoints come from process 0 only.
  assert "8" in os.listdir(two / "checkpoints")
  assert os.path.exists(two / "samples" / "prior_0000008.png")
  assert os.path.exists(two / "eval_test_K6.json")
  with open(two / "metrics.jsonl", encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  assert [r["step"] for r in rows if r["split"] == "valid"] == [4, 8]  # once each
  assert "test NLL" in outputs[0] and "test NLL" not in outputs[1]


def test_incomplete_cluster_flags_name_what_is_missing():
  with pytest.raises(distributed.DistributedError, match="--num_processes, --process_id"):
    distributed.initialize("127.0.0.1:1234")
  with pytest.raises(distributed.DistributedError, match="--process_id=2 must be in"):
    distributed.initialize("127.0.0.1:1234", num_processes=2, process_id=2)
  assert distributed.initialize() is False  # no flags: one process, nothing joined
