"""Two runs on one workdir: the second is refused at once, naming the first; the lock
dies with its holder (even SIGKILL), so it cannot go stale on a local disk."""

import os
import signal
import subprocess
import sys

import pytest

from crvae_jax.train import workdir_lock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _try_in_child(workdir, then="pass", hold_s=0.0):
  code = (f"import time\nfrom crvae_jax.train import workdir_lock\n"
          f"with workdir_lock.hold({workdir!r}, enabled=True):\n"
          f"  print('held', flush=True)\n  time.sleep({hold_s})\n  {then}\n")
  return subprocess.Popen([sys.executable, "-c", code], cwd=REPO, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          env=dict(os.environ, PYTHONPATH=REPO))


def test_a_second_run_is_refused_naming_the_holder(tmp_path):
  workdir = str(tmp_path / "run")
  with workdir_lock.hold(workdir, enabled=True):
    with workdir_lock.hold(workdir, enabled=True):  # reentrant in one process
      pass
    out, _ = _try_in_child(workdir).communicate(timeout=60)
    assert "WorkdirLockedError" in out, out
    assert f"is in use by pid {os.getpid()} on host " in out, out
    assert "delete it" in out, out
  out, _ = _try_in_child(workdir).communicate(timeout=60)  # released: the next run goes
  assert "held" in out and "Error" not in out, out


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
  workdir = str(tmp_path)
  holder = _try_in_child(workdir, hold_s=60)
  assert holder.stdout.readline().strip() == "held"
  with pytest.raises(workdir_lock.WorkdirLockedError, match=f"pid {holder.pid} "):
    with workdir_lock.hold(workdir, enabled=True):
      pass
  holder.send_signal(signal.SIGKILL)
  holder.wait(timeout=60)
  with workdir_lock.hold(workdir, enabled=True):  # the kernel dropped the dead holder's
    pass
