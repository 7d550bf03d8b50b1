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

The root's protocol.json goes along, and so do the grid scores the runner keeps once a
grid run has finished (`table_protocol.freeze_grid_scores`), so that a grid choice
survives its runs; records of another protocol (budget, grid, scale)
are neither read nor overwritten (`matching`), so a smoke run on another root cannot
touch them. The report reads the union (`merged_root`): for each workdir name, the
workdir's own files, or its record where the workdir is gone or lacks finished work the
record has (fewer epochs, or an evaluation missing). The runner schedules from the same
union (`table_protocol.is_finished`): what a record holds is not run again, except the
training of a model whose evaluations are still to run, which needs its weights; its
record is kept until the new workdir has caught up (trained and evaluated again), then
replaced. The report marks the workdirs read from records. A record replaced by a run
that does not continue it (a lost grid pilot trained again from scratch, to the full
budget, as a headline model) keeps the replaced run's training and evaluations in its
job.json under "replaced", and the report lists them under Runs: the pilot's command,
commit and machine stay beside its grid score.
"""

import contextlib
import glob
import json
import os
import shutil
import tempfile
from typing import Iterator, Optional

from absl import logging

from crvae_jax.train.checkpoints import write_bytes_atomic
from experiments import table_protocol as tp

SMALL_FILES = ("config.json", "train_summary.json")  # and job.json, written last
PROTOCOL = "protocol.json"  # the table's numbers (mnist_table.check_protocol_file)
EVAL_PATTERNS = ("eval_test_K*", os.path.join("test_first*", "eval_test_K*"))


def _copy_atomic(src: str, dst: str) -> None:
  with open(src, "rb") as f:
    write_bytes_atomic(dst, f.read())


def _metrics_lines(path: str) -> bytes:
  """metrics.jsonl cut to its validation lines and its first training line (a last line
  half-written by a running job is left out; `table_protocol.metrics_lines`)."""
  keep, seen_train = [], False
  for line, record in tp.metrics_lines(path):
    split = record.get("split")
    if split == "valid" or (split == "train" and not seen_train):
      keep.append(line if line.endswith("\n") else line + "\n")
      seen_train |= split == "train"
  return "".join(keep).encode("utf-8")


def _behind(a: str, b: str) -> bool:
  """Whether workdir or record `a` lacks finished work that `b` has (`_lacks`)."""
  return _lacks(tp.read_job(a), tp.read_job(b))


def _lacks(ra: dict, rb: dict) -> bool:
  """Whether job `ra` lacks finished work that `rb` has: fewer trained epochs, or an
  evaluation of `rb` that `ra` does not hold."""
  return (tp.trained_epochs(ra) < tp.trained_epochs(rb)
          or not set(rb["evals"]) <= set(ra["evals"]))


def replaced_runs(old: dict, new: dict) -> list:
  """What a record `old` about to be overwritten by job `new` keeps under "replaced": its
  own earlier replaced runs, and itself (training, evaluations, anything else it holds)
  if `new` does not continue its training (`tp.continues`: trained again from scratch)."""
  kept = list(old.get("replaced", []))
  if old["train"] and not tp.continues(old["train"], new["train"]):
    kept.append({k: v for k, v in old.items() if k != "replaced"})
  return kept


def save(wd: str, records: str) -> str:
  """Copies workdir `wd`'s records to `<records>/<basename(wd)>/`; returns that path. A
  record holding work that `wd` lacks (a lost run that is being trained again) is kept
  as it is; a record `wd` replaces keeps its runs under "replaced" (`replaced_runs`).
  job.json is written last, so an interrupted copy never claims an evaluation whose
  arrays are not there."""
  dst = os.path.join(records, os.path.basename(os.path.normpath(wd)))
  old = tp.read_job(dst) if _has_job(dst) else None
  new = tp.read_job(wd)  # read first: every evaluation it claims has its arrays by now
  if old is not None and _lacks(new, old):
    return dst
  if os.path.exists(os.path.join(wd, "metrics.jsonl")):
    write_bytes_atomic(os.path.join(dst, "metrics.jsonl"),
                       _metrics_lines(os.path.join(wd, "metrics.jsonl")))
  for pattern in EVAL_PATTERNS:
    for src in glob.glob(os.path.join(wd, pattern)):
      # not an atomic write's temporary file (<name>.tmp<pid>)
      if os.path.isfile(src) and ".tmp" not in os.path.basename(src):
        _copy_atomic(src, os.path.join(dst, os.path.relpath(src, wd)))
  for name in SMALL_FILES:
    if os.path.exists(os.path.join(wd, name)):
      _copy_atomic(os.path.join(wd, name), os.path.join(dst, name))
  replaced = replaced_runs(old, new) if old is not None else []
  tp.write_job(dst, {**new, "replaced": replaced} if replaced else new)  # job.json last
  return dst


def backfill_from_git(records: str) -> dict:
  """Replays each record's committed job.json versions (git log, oldest first) through
  `replaced_runs`, so that a record replaced before "replaced" existed (2026-12-05) regains
  the runs it lost; rewrites every record that has replaced runs. Returns {record name:
  number of replaced runs}. Run it where `records` is inside a git checkout, not while a runner
  writes the records."""
  import subprocess  # pylint: disable=g-import-not-at-top
  counts = {}
  for name in sorted(os.listdir(records)):
    path = os.path.join(records, name)
    if not _has_job(path):
      continue
    git = lambda *a, cwd=path: subprocess.run(["git", *a], cwd=cwd, capture_output=True,
                                              text=True, check=True).stdout
    kept, prev = [], None
    for commit in git("log", "--format=%H", "--reverse", "--", "job.json").split():
      try:
        job = json.loads(git("show", f"{commit}:./job.json"))
      except (subprocess.CalledProcessError, ValueError):
        continue  # deleted or unreadable in that commit
      if prev is not None:
        kept = replaced_runs({**prev, "replaced": kept}, job)
      prev = job
    current = tp.read_job(path)
    if prev is not None:
      kept = replaced_runs({**prev, "replaced": kept}, current)
    for run in current.get("replaced", []):  # already kept: the same run once
      same = [i for i, k in enumerate(kept) if tp.continues(k["train"], run["train"])
              or tp.continues(run["train"], k["train"])]
      if same:
        kept[same[0]] = run  # the record's own entry (it may hold later work)
      else:
        kept.append(run)
    if kept:
      tp.write_job(path, {**current, "replaced": kept})
      counts[name] = len(kept)
  return counts


def save_all(root: str, records: str) -> list:
  """`save` for every workdir under root with a job.json, and root's protocol.json;
  returns the record paths. A workdir that cannot be copied is logged and skipped."""
  if not os.path.isdir(root):
    return []
  if os.path.exists(os.path.join(root, PROTOCOL)):
    _copy_atomic(os.path.join(root, PROTOCOL), os.path.join(records, PROTOCOL))
  scores = _grid_scores(root, records)
  if scores:
    write_bytes_atomic(os.path.join(records, tp.GRID_SCORES),
                       json.dumps(scores, indent=2, sort_keys=True).encode("utf-8"))
  saved = []
  for n in sorted(os.listdir(root)):
    if _has_job(os.path.join(root, n)):
      try:
        saved.append(save(os.path.join(root, n), records))
      except (OSError, ValueError) as e:
        logging.warning("records of %s not copied: %s", n, e)
  return saved


def matching(root: str, records: Optional[str]) -> Optional[str]:
  """`records` if it belongs to root's protocol (the same values in both protocol.json
  files for every key both hold: a key one lacks was added to the protocol later; or no
  protocol.json yet on either side), else None with a warning: records of another
  budget, grid or scale are neither read nor overwritten."""
  if not records:
    return None
  paths = [os.path.join(d, PROTOCOL) for d in (root, records)]
  if not all(os.path.exists(p) for p in paths):
    return records
  mine, theirs = (tp.read_json(p) for p in paths)
  if any(mine[k] != theirs[k] for k in set(mine) & set(theirs)):
    logging.warning("%s belongs to another protocol (%s, root: %s): not used", records,
                    theirs, mine)
    return None
  return records


def _grid_scores(root: str, records: str) -> dict:
  """The kept grid scores of root and records together; where both hold a workdir's
  score, the records' (the older decision) stands."""
  return {**tp.read_grid_scores(root), **tp.read_grid_scores(records)}


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
    scores = _grid_scores(root, records)
    if scores:
      with open(os.path.join(view, tp.GRID_SCORES), "w", encoding="utf-8") as f:
        json.dump(scores, f)
    yield view, from_records
  finally:
    shutil.rmtree(view, ignore_errors=True)
