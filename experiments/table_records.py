"""The Table 1 runs' records in the repository: a lost runs directory loses no number.

The runner's workdirs (checkpoints, hundreds of MB) live outside the checkout and may not
survive from one session to the next. Whenever it writes the report (after every job,
and with --stage=report) the runner first copies each workdir's small records into
`<records>/<workdir name>/` (default `results/mnist_table_records/`, committed with the
report):

- job.json, config.json, train_summary.json: what ran, with which command, commit, date
  and machine;
- metrics.jsonl, cut to the validation lines and the first training line (the validation
  curve and its epoch scale: `table_protocol.valid_curve`);
- every evaluation's JSON and per-image arrays (`eval_test_K*`, also under the K check's
  `test_first*/`): the paired per-image differences of the report.

The report reads the union (`merged_root`): for each workdir name, the workdir's own
files, or its record where the workdir is gone or holds less finished work (fewer
epochs, or fewer evaluations). The runner itself schedules from the workdirs only, so a
job whose workdir is lost runs again; its record is kept until the new workdir has
caught up, then replaced. The report marks the workdirs read from records.
"""

import contextlib
import glob
import json
import os
import shutil
import tempfile
from typing import Iterator, Optional

from experiments import table_protocol as tp

SMALL_FILES = ("job.json", "config.json", "train_summary.json")
EVAL_PATTERNS = ("eval_test_K*", os.path.join("test_first*", "eval_test_K*"))


def _write_atomic(path: str, data: bytes) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, path)


def _metrics_lines(path: str) -> bytes:
  """metrics.jsonl cut to its validation lines and its first training line."""
  keep, seen_train = [], False
  with open(path, encoding="utf-8") as f:
    for line in filter(str.strip, f):
      split = json.loads(line).get("split")
      if split == "valid" or (split == "train" and not seen_train):
        keep.append(line if line.endswith("\n") else line + "\n")
        seen_train |= split == "train"
  return "".join(keep).encode("utf-8")


def progress(path: str) -> tuple:
  """(trained epochs, finished evaluations) of the workdir or record at `path`."""
  rec = tp.read_job(path)
  return tp.trained_epochs(rec), len(rec["evals"])


def _behind(a: str, b: str) -> bool:
  """Whether `a` holds less finished work than `b` (fewer epochs, or as many and fewer
  evaluations)."""
  return progress(a) < progress(b)


def save(wd: str, records: str) -> str:
  """Copies workdir `wd`'s records to `<records>/<basename(wd)>/`; returns that path. A
  record with more finished work than `wd` (a lost run that is being trained again) is
  kept as it is."""
  dst = os.path.join(records, os.path.basename(os.path.normpath(wd)))
  if _has_job(dst) and _behind(wd, dst):
    return dst
  for name in SMALL_FILES:
    if os.path.exists(os.path.join(wd, name)):
      with open(os.path.join(wd, name), "rb") as f:
        _write_atomic(os.path.join(dst, name), f.read())
  if os.path.exists(os.path.join(wd, "metrics.jsonl")):
    _write_atomic(os.path.join(dst, "metrics.jsonl"),
                  _metrics_lines(os.path.join(wd, "metrics.jsonl")))
  for pattern in EVAL_PATTERNS:
    for src in glob.glob(os.path.join(wd, pattern)):
      if os.path.isfile(src) and not src.endswith(".tmp"):
        with open(src, "rb") as f:
          _write_atomic(os.path.join(dst, os.path.relpath(src, wd)), f.read())
  return dst


def save_all(root: str, records: str) -> list:
  """`save` for every workdir under root with a job.json; returns the record paths."""
  if not os.path.isdir(root):
    return []
  return [save(os.path.join(root, n), records) for n in sorted(os.listdir(root))
          if _has_job(os.path.join(root, n))]


def _has_job(path: str) -> bool:
  return os.path.isfile(os.path.join(path, "job.json"))


@contextlib.contextmanager
def merged_root(root: str, records: Optional[str]) -> Iterator[tuple]:
  """(a directory to read the table from, the names read from records): one entry per
  workdir, linking root's workdir where it holds a job.json, else the record. Without
  records (None or missing), root itself."""
  if not records or not os.path.isdir(records):
    yield root, set()
    return
  names = {n for base in (root, records) if os.path.isdir(base)
           for n in os.listdir(base) if _has_job(os.path.join(base, n))}
  view = tempfile.mkdtemp(prefix="mnist_table_view_")
  from_records = set()
  try:
    for n in sorted(names):
      src, rec = os.path.join(root, n), os.path.join(records, n)
      if not _has_job(src) or (_has_job(rec) and _behind(src, rec)):
        src = rec
        from_records.add(n)
      os.symlink(os.path.abspath(src), os.path.join(view, n))
    yield view, from_records
  finally:
    shutil.rmtree(view, ignore_errors=True)
