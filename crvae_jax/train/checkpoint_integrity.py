"""What `checkpoints.Checkpoints` does to the files of a checkpoint step, beside Orbax.

- Digests: once Orbax has finalised a step, the sha256 of every file it wrote (array
  data and metadata) goes to `<step>/crvae_digest.json`; before a restore the files are
  hashed again and compared, so a flipped bit or a truncated file is found before Orbax
  reads anything. Steps written before digests existed (no digest file) restore
  unverified.
- Setting aside: a damaged step is moved, not deleted, to
  `<dir>_damaged/<step>-<UTC time>/` (e.g. `checkpoints_damaged/117-20260101T120000Z`),
  with `why.txt`, so that a run can save that step number again.
- Unfinished saves: `<step>.orbax-checkpoint-tmp*` folders of a save that failed.
- Noise of a failure: Orbax's own error logs of a failed save or restore are shortened to
  one line (no traceback), and the late callbacks of a failed write, which TensorStore
  reports as "RuntimeError: Event loop is closed" (one traceback per array chunk, often
  hundreds), are dropped: `Checkpoints` raises the error with the step and the reason.
"""

import glob
import hashlib
import json
import logging as std_logging
import os
import shutil
import sys
import threading
import time
import traceback
from typing import Optional

DIGEST_FILE = "crvae_digest.json"
_DIGEST_FORMAT = 1
_TMP_SUFFIX = ".orbax-checkpoint-tmp"  # orbax.checkpoint._src.path.atomicity_types


def _files(step_dir: str) -> list:
  """Relative paths of the regular files under step_dir, sorted, without the digest."""
  out = []
  for root, _, names in os.walk(step_dir):
    for name in names:
      rel = os.path.relpath(os.path.join(root, name), step_dir)
      if rel != DIGEST_FILE:
        out.append(rel)
  return sorted(out)


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def write_digest(step_dir: str) -> None:
  """Record size and sha256 of every file of a finalised step (atomically)."""
  files = {rel: {"size": os.path.getsize(os.path.join(step_dir, rel)),
                 "sha256": _sha256(os.path.join(step_dir, rel))}
           for rel in _files(step_dir)}
  tmp = os.path.join(step_dir, DIGEST_FILE + ".tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump({"format": _DIGEST_FORMAT, "algorithm": "sha256", "files": files}, f,
              indent=1, sort_keys=True)
  os.replace(tmp, os.path.join(step_dir, DIGEST_FILE))


def has_digest(step_dir: str) -> bool:
  return os.path.exists(os.path.join(step_dir, DIGEST_FILE))


def verify(step_dir: str) -> Optional[str]:
  """None if every file matches its digest; else what differs, in words. Call only
  when has_digest(step_dir)."""
  try:
    with open(os.path.join(step_dir, DIGEST_FILE), encoding="utf-8") as f:
      files = json.load(f)["files"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    return f"its digest file {DIGEST_FILE} is unreadable ({type(e).__name__}: {e})"
  bad = []
  for rel, want in sorted(files.items()):
    path = os.path.join(step_dir, rel)
    if not os.path.isfile(path):
      bad.append(f"{rel}: missing")
    elif os.path.getsize(path) != want["size"]:
      bad.append(f"{rel}: {os.path.getsize(path)} bytes, written {want['size']}")
    elif _sha256(path) != want["sha256"]:
      bad.append(f"{rel}: sha256 differs from the one recorded when it was written")
  if not bad:
    return None
  more = f" (and {len(bad) - 3} more file(s))" if len(bad) > 3 else ""
  return "; ".join(bad[:3]) + more


def set_aside(step_dir: str, reason: str) -> Optional[str]:
  """Move a damaged step to `<dir>_damaged/<step>-<UTC time>/` with why.txt; the new
  path, or None if it could not be moved (e.g. a read-only workdir)."""
  parent, step = os.path.split(os.path.normpath(step_dir))
  stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
  dest = os.path.join(parent + "_damaged", f"{step}-{stamp}")
  n = 1
  while os.path.exists(dest):
    n += 1
    dest = os.path.join(parent + "_damaged", f"{step}-{stamp}-{n}")
  try:
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    os.rename(step_dir, dest)
  except OSError:
    return None
  try:
    with open(os.path.join(dest, "why.txt"), "w", encoding="utf-8") as f:
      f.write(f"set aside {stamp} from {step_dir}: {reason}\n")
  except OSError:
    pass
  return dest


def unfinished_saves(directory: str, step: int) -> list:
  """The temporary folders Orbax left for `step` (`<step>.orbax-checkpoint-tmp*`)."""
  return sorted(glob.glob(os.path.join(directory, f"{int(step)}{_TMP_SUFFIX}*")))


def _orbax_writer_threads() -> list:
  """Orbax's commit threads still running (one per part of a save: the directories, the
  arrays, the metadata). When one part fails, Orbax reports the failure at once while
  the others may still be writing into the step's temporary folder."""
  return [t for t in threading.enumerate()
          if t.is_alive() and type(t).__module__.startswith("orbax.")]


def remove_unfinished_saves(directory: str, step: int, timeout_s: float = 20.0,
                            settle_s: float = 0.3) -> list:
  """Delete them once Orbax's commit threads have ended (waiting at most timeout_s in
  all: threads of a save whose folder could not be created wait for a signal that never
  comes, up to Orbax's 300 s), and again if a late write brings a folder back within
  settle_s; returns those still there."""
  deadline = time.monotonic() + timeout_s
  me = threading.current_thread()
  for thread in _orbax_writer_threads():
    if thread is not me:
      # threading.Thread's own join: Orbax's overrides re-raise the thread's error (and
      # mark it raised, hiding it from the manager that should report it) or raise
      # TimeoutError; here they are only waited for.
      threading.Thread.join(thread, max(0.0, deadline - time.monotonic()))
  still = sum(t is not me for t in _orbax_writer_threads())
  if still:
    std_logging.getLogger("absl").warning(
        "%d Orbax write thread(s) still running after %.0f s; removing the unfinished "
        "save of step %d anyway", still, timeout_s, step)
  for _ in range(3):
    for path in unfinished_saves(directory, step):
      shutil.rmtree(path, ignore_errors=True)
    time.sleep(settle_s)  # TensorStore may finish a chunk write after its thread ended
    if not unfinished_saves(directory, step):
      break
  return unfinished_saves(directory, step)


class _OneLineOrbaxErrors(std_logging.Filter):
  """Orbax logs each failure of a background save with its traceback (several per
  failure, one per thread); keep the first line of each, without the traceback."""

  def filter(self, record):
    if record.levelno >= std_logging.ERROR and f"{os.sep}orbax{os.sep}" in (
        record.pathname or ""):
      message = record.getMessage().splitlines()[0] if record.getMessage() else ""
      record.msg, record.args = message[:400], ()
      record.exc_info = record.exc_text = None
    return True


_FILTER = _OneLineOrbaxErrors()


def _is_closed_loop_report(unraisable) -> bool:
  """A TensorStore callback of a failed write that found Orbax's event loop closed."""
  error = unraisable.exc_value
  return (isinstance(error, RuntimeError) and str(error) == "Event loop is closed" and
          any(frame.name == "call_soon_threadsafe"
              for frame in traceback.extract_tb(unraisable.exc_traceback)))


def quiet_failure_noise() -> None:
  """Install the log filter on absl's logger (what Orbax logs through) and drop the
  closed-loop reports from sys.unraisablehook (other reports go to the previous hook).
  Idempotent."""
  logger = std_logging.getLogger("absl")
  if _FILTER not in logger.filters:
    logger.addFilter(_FILTER)
  previous = sys.unraisablehook
  if getattr(previous, "drops_closed_loop_reports", False):
    return

  def hook(unraisable):
    if not _is_closed_loop_report(unraisable):
      previous(unraisable)
  hook.drops_closed_loop_reports = True
  sys.unraisablehook = hook
