"""benchmarks/parallel_jobs.py: one unpinned worker against one pinned worker per core,
the pinned ones timed at the same moment, their rates summed, and the block kept in
RESULTS.md."""

import argparse
import os

from benchmarks import compare_torch, parallel_jobs

MACHINE = "2026-12-05 12:50 UTC | AMD EPYC (x86_64) | {} | malloc jemalloc | jax 0.10.2 cpu x1"


class FakeWorker:
  """compare_torch.Worker's interface: rates by core count, a log of what ran when."""
  log = []

  def __init__(self, name, scale, args, env=None, cpus=None):
    del scale, args, env
    self.name, self.cpus, self.pending = name, cpus, None

  def send(self, what):
    FakeWorker.log.append(("start", self.cpus, what))
    self.pending = what

  def receive(self):
    what, self.pending = self.pending, None
    FakeWorker.log.append(("end", self.cpus, what))
    return self.rate(what)

  def rate(self, what):
    base = {"train": 300.0, "eval": 4000.0, "peak": 190.0}[what]
    return base if self.cpus is None else 0.6 * base  # one core: 60% of two

  def ask(self, what):
    if what == "info":
      cores = "2 cores" if self.cpus is None else "1 of 2 cores"
      return {"runtime": MACHINE.format(cores), "conv_impl": "onednn + fused backward",
              "params": 1_862_889}
    self.send(what)
    return self.receive()

  def close(self):
    pass


def _args(rounds=3):
  return argparse.Namespace(row="crvae", scale="cpu", rounds=rounds, steps=20,
                            eval_images=100, jax_variant="onednn+fused", eval_samples=50,
                            chunk=50, step="mnist", conv_impl="", fused_backward=False)


def test_pinned_workers_run_together_and_their_rates_are_summed(monkeypatch):
  FakeWorker.log = []
  monkeypatch.setattr(compare_torch, "Worker", FakeWorker)
  monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
  res = parallel_jobs.run(_args())
  assert res["median"][("whole", "train")] == 300.0
  assert res["median"][("pinned", "train")] == 2 * 0.6 * 300.0
  assert res["median"][("pinned", "eval")] == 2 * 0.6 * 4000.0
  # the pinned workers: one per core, both started before either is read
  train_steps = [e for e in FakeWorker.log if e[2] == "train"]
  first_pinned = [e for e in train_steps if e[1] is not None][:4]
  assert [e[0] for e in first_pinned] == ["start", "start", "end", "end"]
  assert sorted(tuple(sorted(e[1])) for e in first_pinned[:2]) == [(0,), (1,)]
  # the order of unpinned and pinned flips every round
  firsts = [e[1] is None for e in train_steps if e[0] == "start"]
  assert firsts[:6] == [True, False, False, False, False, True]  # round 2: pinned first
  text = parallel_jobs.report(res, _args())
  assert "| train (img/s) | 300.0 | 360.0 | **1.20x** |" in text
  assert "| eval (decoder samples/s) | 4000.0 | 4800.0 | **1.20x** |" in text
  assert "pinned workers: 1 of 2 cores each" in text


def test_write_results_makes_its_section_once_and_appends_every_run(tmp_path, monkeypatch):
  monkeypatch.setattr(compare_torch, "git_commit", lambda: "abc1234")
  path = tmp_path / "RESULTS.md"
  path.write_text("# Measured results\n\n## Other section\n\ntext\n")
  for n in (1, 2):
    parallel_jobs.write_results(f"# machine line {n}\n| table |", str(path))
  text = path.read_text()
  assert text.count(parallel_jobs.RESULTS_SECTION) == 1
  assert text.index("machine line 1") < text.index("machine line 2") < text.index(
      parallel_jobs.RESULTS_MARKER)
  assert text.startswith("# Measured results\n\n## Other section\n\ntext\n")
  assert "commit abc1234" in text


def test_a_pinned_process_names_its_cores_in_machine_lines(monkeypatch):
  from experiments import provenance  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(os, "cpu_count", lambda: 2)
  monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {1})
  assert provenance.cpu_fields()[1] == "1 of 2 cores"
  monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
  assert provenance.cpu_fields()[1] == "2 cores"
