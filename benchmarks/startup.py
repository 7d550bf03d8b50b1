r"""Start-up time of the CPU-scale MNIST training: first start (empty compilation cache)
and repeat start (the cache the first start filled), the time from launching
`python -m experiments.main` to its log line "first step done".

  python -m benchmarks.startup --rounds=2

Each round makes a new empty cache directory, starts a fresh training run with it (cold),
kills it once its first step is done, then starts another fresh run with the same cache
(warm). Appends the result to benchmarks/RESULTS.md with the command, date, commit and
machine. The process is killed after its first step (it is a measurement, not a run).
"""

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from benchmarks.nll_eval import machine_line
from experiments.provenance import REPO, git_commit

CONFIG = "experiments/configs/mnist.py:crvae,cpu"
FIRST_STEP = re.compile(r"first step done ([0-9.]+)s after start")
TIMEOUT_S = 600


def time_to_first_step(workdir: str, cache_dir: str) -> tuple:
  """(wall seconds from launch to 'first step done', the seconds the run itself reports
  from the start of training, i.e. without imports and data loading)."""
  cmd = [sys.executable, "-m", "experiments.main", f"--config={CONFIG}",
         f"--workdir={workdir}", "--mode=train", f"--compilation_cache_dir={cache_dir}"]
  t0 = time.perf_counter()
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, start_new_session=True)
  try:
    for line in proc.stderr:
      match = FIRST_STEP.search(line)
      if match:
        return time.perf_counter() - t0, float(match.group(1))
      if time.perf_counter() - t0 > TIMEOUT_S:
        break
    raise RuntimeError(f"no 'first step done' from {' '.join(cmd)} (rc {proc.poll()})")
  finally:
    os.killpg(proc.pid, signal.SIGKILL)  # this run only: its own session
    proc.wait()


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--rounds", type=int, default=2)
  p.add_argument("--results", default=os.path.join(REPO, "benchmarks", "RESULTS.md"))
  p.add_argument("--note", default="", help="A line on the machine's load, for the record.")
  args = p.parse_args()
  rows = []
  for r in range(args.rounds):
    root = tempfile.mkdtemp(prefix="crvae_startup_")
    try:
      cache = os.path.join(root, "jax_cache")
      cold = time_to_first_step(os.path.join(root, "cold"), cache)
      warm = time_to_first_step(os.path.join(root, "warm"), cache)
    finally:
      shutil.rmtree(root, ignore_errors=True)
    rows.append((r + 1, cold, warm))
    print(f"round {r + 1}: first start {cold[0]:.1f} s (train {cold[1]:.1f} s), repeat "
          f"start {warm[0]:.1f} s (train {warm[1]:.1f} s)", flush=True)
  lines = ["", "## Start-up: first and repeat start (benchmarks/startup.py)", "",
           f"- Command: `python -m benchmarks.startup --rounds={args.rounds}`",
           f"- Commit: {git_commit()}. Machine: {machine_line()}"]
  if args.note:
    lines.append(f"- {args.note}")
  lines += ["- Time from launching `python -m experiments.main "
            f"--config={CONFIG} --mode=train` on a fresh workdir to its log line "
            "\"first step done\" (imports, MNIST loading, initialisation, compiling or "
            "reading the compiled train step, one step); in brackets the part the run "
            "reports itself, from the start of training. First start: an empty "
            "compilation cache; repeat start: the cache the first start filled. (The machine "
            "line's malloc setting is the measuring process's; the measured runs restart "
            "themselves with huge pages, as `experiments.main` does.)", "",
            "| round | first start (s) | repeat start (s) |", "|---|---|---|"]
  lines += [f"| {r} | {cold[0]:.1f} ({cold[1]:.1f}) | {warm[0]:.1f} ({warm[1]:.1f}) |"
            for r, cold, warm in rows]
  with open(args.results, "a", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  print(f"appended to {args.results}")


if __name__ == "__main__":
  main()
