"""One writer per workdir: an exclusive lock on `<workdir>/.lock` while a run trains.

    with workdir_lock.hold(workdir):
      ...  # train: checkpoints, metrics.jsonl, samples

A second run on the same workdir fails at once with WorkdirLockedError naming the
holder (pid, host, start time, command). The lock is `fcntl.flock`: the kernel drops it
when the holding process ends in any way, SIGKILL included, so on a local disk a lock
cannot go stale. On a network filesystem (NFS), a lock of a machine that crashed is
dropped only when the server notices; if the holder named in the message is surely
gone, delete `<workdir>/.lock` and rerun.

In a multi-process run only process 0 takes the lock (the processes share the workdir).
Reentrant within a process (a nested `hold` of the same workdir is a no-op).
"""

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from typing import Optional

LOCK_FILE = ".lock"
_HELD = {}  # realpath of a workdir this process holds -> nesting depth


class WorkdirLockedError(RuntimeError):
  """Another process holds the workdir's lock (it is named in the message)."""


def _holder(path: str) -> str:
  try:
    with open(path, encoding="utf-8") as f:
      info = json.load(f)
    return (f"pid {info['pid']} on host {info['host']} (started {info['since']}: "
            f"{info['command']})")
  except (OSError, ValueError, KeyError, TypeError):
    return "another process (its pid could not be read from the lock file)"


@contextlib.contextmanager
def hold(workdir: str, *, enabled: Optional[bool] = None):
  """Hold `workdir`'s lock for the `with` block; WorkdirLockedError if another process
  holds it. enabled: None (default) = only on process 0 of a multi-process run."""
  if enabled is None:
    import jax  # pylint: disable=g-import-not-at-top
    enabled = jax.process_index() == 0
  key = os.path.realpath(workdir)
  if not enabled:
    yield
    return
  if key in _HELD:  # this process holds it already
    _HELD[key] += 1
    try:
      yield
    finally:
      _HELD[key] -= 1
    return
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_FILE)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise WorkdirLockedError(
          f"{os.path.abspath(workdir)} is in use by {_holder(path)}; two runs must not "
          "write one workdir. Wait for it to finish, stop it, or use another --workdir. "
          f"(The lock, {path}, is released when its process ends, even if killed; only "
          "on a network filesystem after a machine crash can it outlive its process: "
          "then delete it.)") from None
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "command": " ".join(sys.argv)[:300]}
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(info).encode())
    os.fsync(fd)
    _HELD[key] = 1
    try:
      yield
    finally:
      del _HELD[key]
  finally:
    os.close(fd)  # releases the lock
