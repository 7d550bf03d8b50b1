"""The Table 1 experiment (experiments/mnist_table.py): its plan, the grid's choice, the
budget rule, the verdicts, the report from finished runs, the runner's resume and stop,
and one tiny real run through the library."""

import glob
import json
import math
import os
import re
import shutil
import subprocess
import sys

from absl import app
from absl.testing import flagsaver
import numpy as np
import pytest

from conftest import make_tiny_config, make_tiny_data
from crvae_jax import host_memory, likelihood, stats
from crvae_jax.families import mnist as mnist_family
from crvae_jax.train import checkpoints
from experiments import mnist_table, table_records, table_report, table_stats
from experiments import table_protocol as tp


@pytest.fixture(name="flags")
def _flags(tmp_path):
  # Other test modules define required flags of their own (experiments/main.py), so set
  # values directly instead of parsing a command line; flagsaver restores them.
  flags = mnist_table.FLAGS
  if not flags.is_parsed():
    flags.mark_as_parsed()
  with flagsaver.flagsaver(root=str(tmp_path / "runs"), pilot_root=str(tmp_path / "pilots"),
                           output=str(tmp_path / "results" / "table.md"),
                           records=str(tmp_path / "results" / "records"),
                           compilation_cache_dir=""):
    yield flags


def _write_curve(wd, elbos, steps_per_epoch=10, start=0):
  """metrics.jsonl of a run with validation ELBO elbos[i] after epoch start + i + 1."""
  os.makedirs(wd, exist_ok=True)
  with open(os.path.join(wd, "metrics.jsonl"), "a", encoding="utf-8") as f:
    for i, elbo in enumerate(elbos):
      e = start + i + 1
      f.write(json.dumps({"step": e * steps_per_epoch, "split": "train", "epoch": e,
                          "examples_per_s": 100.0}) + "\n")
      f.write(json.dumps({"step": e * steps_per_epoch, "split": "valid", "elbo": elbo}) + "\n")


def _segment(start, end, seconds=60.0):
  return {"epochs_from": start, "epochs_to": end, "seconds": seconds, "commit": "abc1234",
          "date": "2026-12-03 20:00 UTC", "machine": "test machine", "load": 1.0,
          "command": "python -m experiments.mnist_table"}


def _finish_grid(root, p, row, elbo_of):
  """Grid runs of `row` trained to grid_epochs with validation ELBO elbo_of(setting, e)."""
  for s in tp.grid_settings(p, row):
    wd = tp.workdir(root, s)
    n = int(p.grid_epochs)
    _write_curve(wd, [elbo_of(s, e) for e in range(1, n + 1)])
    tp.write_job(wd, {"setting": vars(s), "train": [_segment(0, n)], "evals": {}})


def test_plan_orders_phases_names_workdirs_and_waits_for_the_grid(tmp_path):
  p = tp.Protocol(num_epochs=20)
  jobs = tp.plan(p, str(tmp_path))
  names = [j.setting.name for j in jobs if j.stage == "lr_grid"][:9]
  assert names[:3] == ["vae_lr0.0003_b1_s0", "vae_lr0.001_b1_s0", "vae_lr0.003_b1_s0"]
  assert names[3:5] == ["crvae_lr0.0003_lstmT_b1_s0", "crvae_lr0.0003_lstmfull_b1_s0"]
  assert not any(j.stage == "lr_grid" and j.row == "criwa" for j in jobs)  # crVAE's choice
  # Phase 1 (VAE, crVAE) is complete, seeds included, before any other row's grid.
  first_cvae = next(i for i, j in enumerate(jobs) if j.row == "cvae")
  assert {(j.entry, j.seed) for j in jobs[:first_cvae] if j.stage == "train"} == {
      ("vae", 0), ("vae", 1), ("vae", 2), ("crvae", 0), ("crvae", 1), ("crvae", 2),
      (tp.OTHER_LSTM, 0)}
  assert [j.num_images for j in jobs[:first_cvae] if j.entry.startswith("kcheck")] == [
      1000] * 4
  # Each seed-0 model is evaluated (headline K, then the K check) before the next trains.
  first_seed1 = next(i for i, j in enumerate(jobs) if j.seed == 1)
  assert [(j.stage, j.entry, j.num_samples) for j in jobs[9:first_seed1]] == [
      ("train", "vae", 0), ("eval", "vae", 1000), ("eval", "kcheck:vae", 5000),
      ("eval", "kcheck:vae", 100), ("train", "crvae", 0), ("eval", "crvae", 1000),
      ("eval", "kcheck:crvae", 5000), ("eval", "kcheck:crvae", 100),
      ("train", tp.OTHER_LSTM, 0), ("eval", tp.OTHER_LSTM, 1000)]
  pending = [j for j in jobs if j.stage == "train" and not j.entry.startswith("release")]
  assert all(j.setting is None and not tp.is_ready(j, p, str(tmp_path)) for j in pending)
  release = [j.setting.name for j in jobs if j.entry.startswith("release:")]
  assert release[:2] == ["vae_lr0.0003_b0.784_s0", "vae_lr0.0003_b0.784_s0"]
  assert "criwa_lr0.003_lstmT_b1_s0" in release  # the release trains crIWA at beta 1
  assert tp.Setting("crvae", 1e-3, "full", 1.0, 2).overrides() == {
      "optim.learning_rate": 1e-3, "objective.beta": 1.0, "train.seed": 2,
      "optim.halve_every_epochs": 0.0, "optim.lstm_lr_divisor": 1.0}
  with pytest.raises(ValueError, match=r"\['criwa'\] take crvae's grid choice"):
    tp.Protocol(rows=("vae", "criwa"))
  with pytest.raises(ValueError, match=r"from_crvae_grid: \['vae', 'crvae'\] cannot"):
    tp.Protocol(from_crvae_grid=("vae", "crvae", "crvae_t4"))
  # The crVAE variants can share crVAE's choice: no grid of their own, same settings.
  few = tp.Protocol(num_epochs=20, from_crvae_grid=("criwa", "crvae_t4", "crvae_t16"))
  grid = {j.row for j in tp.plan(few, str(tmp_path)) if j.stage == "lr_grid"}
  assert grid == {"vae", "crvae", "cvae", "crvae_inference", "crvae_generation",
                  "crvae_2layer"}
  _finish_grid(str(tmp_path), few, "crvae",
               lambda s, e: -100.0 - (s.lr == 1e-3) * 5 - (s.lstm == "full"))
  choice = tp.grid_choice(few, str(tmp_path), "crvae_t4")
  assert (choice.row, choice.lr, choice.lstm) == ("crvae_t4", 3e-4, "T")
  assert tp.grid_choice(few, str(tmp_path), "crvae_inference") is None  # its own grid


def test_grid_picks_the_best_elbo_within_the_pilot_epochs(tmp_path):
  root = str(tmp_path)
  p = tp.Protocol(rows=("vae", "crvae", "criwa"), grid_epochs=3, num_epochs=10)
  score = {(1e-3, "T"): -120.0, (3e-3, "T"): -118.0, (3e-3, "full"): -119.0}
  _finish_grid(root, p, "crvae", lambda s, e: score.get((s.lr, s.lstm), -130.0) - 3 + e)
  assert tp.grid_choice(p, root, "vae") is None  # vae's grid has not run
  best = tp.grid_choice(p, root, "crvae")
  assert (best.lr, best.lstm, best.seed) == (3e-3, "T", 0)
  other = tp.grid_choice(p, root, "crvae", "full")
  assert (other.lr, other.lstm) == (3e-3, "full")
  assert tp.grid_choice(p, root, "criwa") == tp.Setting("criwa", 3e-3, "T", 1.0, 0)
  # Epochs past the pilot's (the winner continued to the budget) do not change the choice.
  _write_curve(tp.workdir(root, tp.Setting("crvae", 1e-3, "T", 1.0, 0)), [-100.0], start=3)
  assert tp.grid_choice(p, root, "crvae") == best
  # The plan continues the winner's workdir for seed 0 and starts fresh ones for seeds 1-2.
  train = [j for j in tp.plan(p, root) if j.stage == "train" and j.entry == "crvae"]
  assert [j.setting.name for j in train] == [f"crvae_lr0.003_lstmT_b1_s{k}" for k in range(3)]
  assert tp.is_ready(train[0], p, root) and not tp.is_done(train[0], root)
  # A run stopped by non-finite steps counts as finished with what it reached.
  s = tp.Setting("vae", 3e-3, None, 1.0, 0)
  tp.write_job(tp.workdir(root, s), {"setting": vars(s), "train": [_segment(0, 1)],
                                     "evals": {}, "failed": {"epoch": 1, "message": "nan"}})
  _write_curve(tp.workdir(root, s), [-125.0])
  _finish_grid(root, p, "vae", lambda s, e: -140.0 + e if s.lr != 3e-3 else -125.0)
  assert tp.grid_scores(p, root, "vae")[s] == -125.0


def test_a_grid_choice_survives_its_run_trained_again(tmp_path):
  root, records = str(tmp_path / "root"), str(tmp_path / "records")
  p = tp.Protocol(rows=("vae",), num_epochs=10, grid_epochs=2, release=False)
  _finish_grid(root, p, "vae", lambda s, e: {1e-3: -120.0, 3e-3: -121.0}.get(s.lr, -130.0))
  assert tp.grid_choice(p, root, "vae").lr == 1e-3
  kept = tp.freeze_grid_scores(p, root, root)
  assert kept == {"vae_lr0.0003_b1_s0": -130.0, "vae_lr0.001_b1_s0": -120.0,
                  "vae_lr0.003_b1_s0": -121.0}
  table_records.save_all(root, records)
  # The runs directory is lost; the winner trains again (another CPU model: its first
  # epochs now score below the runner-up) while the others stay in their records.
  shutil.rmtree(root)
  wd = tp.workdir(root, tp.Setting("vae", 1e-3, None, 1.0, 0))
  _write_curve(wd, [-125.0] * 10)
  tp.write_job(wd, {"setting": {}, "train": [_segment(0, 10)], "evals": {}})
  assert tp.best_valid_elbo(wd, 2) == -125.0  # below the runner-up's -121
  with table_records.merged_root(root, records) as (view, _):
    assert tp.freeze_grid_scores(p, view, root) == kept  # seeded from the records
    assert tp.grid_choice(p, view, "vae").lr == 1e-3
  assert tp.grid_choice(p, root, "vae").lr == 1e-3
  table_records.save_all(root, records)
  assert tp.read_grid_scores(records) == kept


def test_budget_rule_on_a_learning_curve():
  epochs = np.arange(1, 61, dtype=float)
  elbo = -90.0 - 60.0 * np.exp(-epochs / 8.0)
  gains = {e: (elbo[e - 1] - elbo[e - 6]) / 5 for e in range(6, 61)}
  expected = min(e for e, g in gains.items() if e >= 20 and g < 0.3)
  assert tp.budget_epoch(epochs, elbo) == expected
  assert tp.budget_epoch(epochs, elbo, gain=100.0) == 20  # never before the minimum
  assert tp.budget_epoch(epochs, elbo, gain=1e-6) is None


def test_verdicts_hold_fail_or_sit_within_noise():
  rng = np.random.default_rng(0)
  base = 100 + 10 * rng.normal(size=2000)
  seeds = lambda shift, sd, n: {k: base + shift + sd * rng.normal() + 0.1 * rng.normal(
      size=2000) for k in range(n)}
  vae = seeds(0.0, 0.3, 3)
  better, worse = seeds(-3.0, 0.3, 3), seeds(+3.0, 0.3, 3)
  same = {k: v + 0.01 * rng.normal(size=2000) for k, v in vae.items()}
  pooled = table_stats.pooled_seed_variance([vae, better, worse, same])
  assert table_stats.compare(better, vae, pooled).verdict == "holds"
  assert table_stats.compare(worse, vae, pooled).verdict == "does not hold"
  assert table_stats.compare(same, vae, pooled).verdict == "within noise"
  c = table_stats.compare(better, vae, pooled)
  means = lambda d: np.array([v.mean() for v in d.values()])
  assert c.mean == pytest.approx(means(better).mean() - means(vae).mean())
  assert c.se_seeds == pytest.approx(math.sqrt(np.var(means(better), ddof=1) / 3
                                               + np.var(means(vae), ddof=1) / 3))
  assert set(c.per_seed) == {0, 1, 2} and not c.pooled
  one = {0: better[0]}
  c1 = table_stats.compare(one, vae, pooled)  # the one-seed side borrows the pooled SD
  assert c1.pooled and c1.se_seeds == pytest.approx(
      math.sqrt(pooled + np.var(means(vae), ddof=1) / 3))
  assert not c1.provisional
  c0 = table_stats.compare(one, {0: vae[0]}, None)  # no seed variance known anywhere
  assert c0.provisional and c0.se == c0.se_images and c0.verdict == "holds"
  twin = table_stats.compare({0: base}, {0: base.copy()}, None)  # identical: SE 0
  assert twin.verdict == "within noise" and "n/a (SE 0)" in table_stats.describe(twin)
  # A difference of 1.5 SE is within noise, 2.5 SE is not.
  tiny = {0: base + 0.0}
  for z, verdict in ((1.5, "within noise"), (-2.5, "holds")):
    shifted = {0: base + z * 0.5}
    assert table_stats.compare(shifted, tiny, 0.125).verdict == verdict  # se = 0.5


def _fake_finished(root, p, nll_of):
  """Grids, trained seeds and each trained entry's scoring evaluation (K=num_samples on
  the images its eval job names: all, or the first release_images of a release row)."""
  for row in tp.grid_rows(p):
    _finish_grid(root, p, row, lambda s, e: -100.0 - 10 * s.lr * 1000 + e)
  jobs = tp.plan(p, root)
  for job in jobs:
    if job.stage != "train":
      continue
    ev = next(j for j in jobs if j.stage == "eval" and j.entry == job.entry
              and j.setting == job.setting)
    wd = tp.workdir(root, job.setting)
    rec = tp.read_job(wd)
    if tp.trained_epochs(rec) < p.num_epochs:
      done = int(tp.trained_epochs(rec))
      _write_curve(wd, [-100.0 + e for e in range(done + 1, int(p.num_epochs) + 1)],
                   start=done)
      rec.update(setting=vars(job.setting),
                 train=rec["train"] + [_segment(done, p.num_epochs)])
    nll = nll_of(job.entry, job.seed)[:ev.num_images]
    out = tp.eval_dir(wd, ev.num_images)
    os.makedirs(out, exist_ok=True)
    np.save(mnist_family.per_image_path(out, p.num_samples), nll)
    with open(os.path.join(out, f"eval_test_K{p.num_samples}.json"), "w",
              encoding="utf-8") as f:
      json.dump({"nll": float(nll.mean()), "neg_elbo": float(nll.mean()) + 5,
                 "test_set": "synthetic"}, f)
    rec["evals"][ev.eval_key] = {
        "num_samples": p.num_samples, "report_k": 100, "num_images": len(nll),
        "trained_epochs": p.num_epochs, "seconds": 120.0, "commit": "abc1234",
        "date": "2026-12-03 20:00 UTC", "machine": "test machine",
        "command": "python -m experiments.mnist_table"}
    tp.write_job(wd, rec)


def test_report_from_fake_finished_runs(tmp_path):
  root, pilots = str(tmp_path / "runs"), str(tmp_path / "pilots")
  p = tp.Protocol(rows=("vae", "crvae", "cvae"), grid_epochs=2, num_epochs=4,
                  release=False, k_curve_rows=())
  rng = np.random.default_rng(1)
  base = 90 + 5 * rng.normal(size=300)
  shift = {"vae": 0.0, "crvae": -2.0, tp.OTHER_LSTM: -1.0, "cvae": 0.05}
  nll = {(e, k): base + shift[e] + 0.2 * rng.normal() + 0.05 * rng.normal(size=300)
         for e in shift for k in range(3)}
  _fake_finished(root, p, lambda e, k: nll[(e, k)])
  epochs = np.arange(1, 41)
  _write_curve(os.path.join(pilots, "curve_vae"), list(-90 - 60 * np.exp(-epochs / 8.0)))
  with open(os.path.join(pilots, "curve_vae", "config.json"), "w", encoding="utf-8") as f:
    json.dump({"row": "vae", "model": {"variant": "vae", "num_blocks": 8},
               "optim": {"learning_rate": 1e-3, "lstm_lr_divisor": 8.0},
               "objective": {"beta": 1.0}}, f)
  out = str(tmp_path / "results" / "table.md")
  paths = table_report.write_report(p, root, pilots, out, command="python -m x",
                                    commit="abc1234", note="synthetic runs")
  text = open(out, encoding="utf-8").read()
  assert sorted(os.path.basename(x) for x in paths) == [
      "table.md", "table_budget.png", "table_valid_elbo.png"]
  entries = table_report.collect(p, root)
  pooled = table_stats.pooled_seed_variance([entries[k].nll for k in ("vae", "crvae",
                                                                      "cvae")])
  crvae = {k: nll[("crvae", k)] for k in range(3)}
  vae = {k: nll[("vae", k)] for k in range(3)}
  c = table_stats.compare(crvae, vae, pooled)
  label = entries["crvae"].label
  line = next(l for l in text.splitlines() if l.startswith(f"| {label} |"))
  assert f"{c.mean:+.2f} ({c.se_seeds:.2f} / {c.se_images:.2f})" in line
  assert "| 3 of 3 |" in line
  assert f"- {label} < VAE: **holds** ({table_stats.describe(c)})" in text
  assert "- VAE < cVAE: **within noise**" in text
  assert "- crVAE@inference <" not in text  # not a row of this run: no verdict line
  budget = tp.budget_epoch(epochs.astype(float), -90 - 60 * np.exp(-epochs / 8.0))
  assert f"The VAE meets the rule at epoch **{budget}**." in text
  assert "This table's runs use 4 epochs (`--num_epochs`)" in text
  assert "Note: synthetic runs" in text
  assert "grid runs 12 of 12, training runs 10 of 10, evaluations 10 of 10" in text


def test_report_names_lost_pilot_curves_and_writes_its_note_once(tmp_path):
  root, pilots = str(tmp_path / "runs"), str(tmp_path / "pilots")
  p = tp.Protocol(rows=("vae",), grid_epochs=2, num_epochs=4, release=False,
                  k_curve_rows=(), num_seeds=1)
  note = "runs lost on 2026-12-04; budget chosen earlier"
  _fake_finished(root, p, lambda e, k: np.full(20, 90.0))
  wd = tp.workdir(root, next(j.setting for j in tp.plan(p, root) if j.stage == "train"))
  rec = tp.read_job(wd)
  assert len(rec["train"]) == 2  # the grid pilot's segment and its continuation
  rec["train"][0]["command"] = f"python -m experiments.mnist_table --note={note}"
  rec["train"][-1]["command"] = "python -m experiments.mnist_table --note=another note"
  tp.write_job(wd, rec)
  out = str(tmp_path / "results" / "table.md")
  budget_png = str(tmp_path / "results" / "table_budget.png")
  write = lambda: open(out, encoding="utf-8").read() if table_report.write_report(
      p, root, pilots, out, command="python -m x", commit="abc1234", note=note) else ""
  text = write()
  assert f"No pilot learning curves under `{pilots}`." in text
  assert "![pilot curves]" not in text  # no picture: none was ever drawn
  assert text.count(note) == 1  # the Note; its commands point to it
  assert "`python -m experiments.mnist_table --note=<the Note above>`" in text
  assert "`python -m experiments.mnist_table --note=another note`" in text
  shutil.copy(os.path.join(os.path.dirname(__file__), "..", "results",
                           "mnist_table_budget.png"), budget_png)
  text = write()
  assert "drawn by an earlier report from pilot curves that are no longer there" in text
  assert "![pilot curves](table_budget.png)" in text
  assert os.path.exists(budget_png)  # kept, not redrawn from nothing


def test_release_rows_score_a_subset_paired_with_the_headline_on_the_same_images(
    tmp_path, flags):
  del flags  # check_protocol_file raises absl's UsageError
  root = str(tmp_path / "runs")
  p = tp.Protocol(rows=("vae", "crvae"), grid_epochs=2, num_epochs=4, num_seeds=1,
                  k_curve_rows=(), release_images=50)
  evals = [j for j in tp.plan(p, root) if j.stage == "eval"]
  assert [j.num_images for j in evals if j.entry.startswith("release:")] == [50, 50]
  assert all(j.num_images is None for j in evals if not j.entry.startswith("release:"))
  rng = np.random.default_rng(3)
  nll = {(e, 0): 90 + 5 * rng.normal(size=200)
         for e in ("vae", "crvae", tp.OTHER_LSTM, "release:vae", "release:crvae")}
  _fake_finished(root, p, lambda e, k: nll[(e, k)])
  entries = table_report.collect(p, root)
  assert len(entries["release:crvae"].nll[0]) == 50 and len(entries["crvae"].nll[0]) == 200
  text = "\n".join(table_report.release_section(p, entries))
  assert "on the first 50 test images" in text
  rel = nll[("release:crvae", 0)][:50]
  pair = lambda x: "%+.2f +- %.2f" % stats.mean_and_stderr(rel - x[:50])
  line = next(l for l in text.splitlines() if l.startswith("| crVAE"))
  assert f"| {rel.mean():.2f} |" in line
  assert f"| {pair(nll[('release:vae', 0)])} | {pair(nll[('crvae', 0)])} |" in line
  with pytest.raises(ValueError, match="release_images=0"):
    tp.Protocol(release_images=0)
  # The subset is one of the table's numbers: a run with another one is refused.
  mnist_table.check_protocol_file(root, p, write=True)
  with pytest.raises(app.UsageError, match="release_images"):
    mnist_table.check_protocol_file(
        root, tp.Protocol(rows=("vae", "crvae"), grid_epochs=2, num_epochs=4,
                          release_images=None), write=False)


def _fake_library(monkeypatch, calls):
  """mnist_table's library calls replaced by writers of the same files (no JAX); the
  clock advances 60 s per trained epoch and nothing is measured (the flags' rates)."""
  clock = [0.0]

  def train(config, wd, data):
    del data
    calls.append(("train", os.path.basename(wd), config.train.num_epochs))
    epochs, _ = tp.valid_curve(wd)
    done = int(epochs.max()) if len(epochs) else 0
    clock[0] += 60.0 * (config.train.num_epochs - done)
    _write_curve(wd, [-100.0 - 1e3 * config.optim.learning_rate
                      for _ in range(done, int(config.train.num_epochs))], start=done)

  def score(config, wd, data, deadline=None):
    del deadline  # the fake finishes at once
    k, n = config.eval.num_samples, len(data.test_binary)
    calls.append(("eval", os.path.basename(wd), k, n))
    with open(os.path.join(wd, f"eval_test_K{k}.json"), "w", encoding="utf-8") as f:
      json.dump({"nll": 90.0, "neg_elbo": 95.0, "test_set": "tiny"}, f)
    for name in mnist_family.PER_IMAGE_NAMES:
      np.save(mnist_family.per_image_path(wd, k, name), np.full(n, 90.0 + 100 / k))

  monkeypatch.setattr(mnist_table, "now", lambda: clock[0])
  monkeypatch.setattr(tp, "measured_rates", lambda root, pilot_root=None: ({}, {}))
  monkeypatch.setattr(mnist_table, "train", train)
  monkeypatch.setattr(mnist_table, "score", score)
  monkeypatch.setattr(mnist_table, "load_data", lambda config: make_tiny_data(num_eval=10))
  monkeypatch.setattr(mnist_table, "base_config", lambda row, scale: make_tiny_config(row))


def test_runner_continues_the_grid_winner_skips_finished_work_and_stops(flags, monkeypatch):
  calls = []
  _fake_library(monkeypatch, calls)
  settings = dict(rows=["vae"], lrs=["1e-3", "3e-3"], grid_epochs=2.0, num_epochs=5.0,
                  num_seeds=2, release=False, k_curve_rows=["vae"], k_curve_images=4,
                  num_samples=20, k_curve_samples=50, epoch_seconds=60.0)
  with flagsaver.flagsaver(stop_after_minutes=6.5, cut_to_fit=True,
                           **settings):  # 6 epochs of 60 s
    mnist_table.main(["mnist_table"])
  assert calls == [("train", "vae_lr0.001_b1_s0", 2.0), ("train", "vae_lr0.003_b1_s0", 2.0),
                   ("train", "vae_lr0.001_b1_s0", 4.0)]  # cut to the epochs that fit
  calls.clear()
  with flagsaver.flagsaver(max_jobs=3, **settings):
    mnist_table.main(["mnist_table"])
  assert calls == [("train", "vae_lr0.001_b1_s0", 5.0), ("eval", "vae_lr0.001_b1_s0", 20, 10),
                   ("eval", "vae_lr0.001_b1_s0", 50, 4)]
  calls.clear()
  with flagsaver.flagsaver(**settings):
    mnist_table.main(["mnist_table"])
  assert calls == [("eval", "vae_lr0.001_b1_s0", 100, 4), ("train", "vae_lr0.001_b1_s1", 5.0),
                   ("eval", "vae_lr0.001_b1_s1", 20, 10)]
  root = flags.root
  rec = tp.read_job(os.path.join(root, "vae_lr0.001_b1_s0"))
  assert [(s["epochs_from"], s["epochs_to"]) for s in rec["train"]] == [(0, 2), (2, 4),
                                                                        (4, 5)]
  assert rec["overrides"]["optim.halve_every_epochs"] == 0.0
  assert os.path.exists(os.path.join(root, "vae_lr0.001_b1_s0", "test_first4",
                                     "eval_test_K50_nll.npy"))
  assert not os.path.exists(os.path.join(root, "vae_lr0.001_b1_s0", "eval_test_K50.json"))
  calls.clear()
  with flagsaver.flagsaver(**settings):
    mnist_table.main(["mnist_table"])  # everything finished: nothing runs
  assert not calls
  text = open(flags.output, encoding="utf-8").read()
  assert "| VAE | 0.001 | - | 2 of 2 | 95.00 (0.00) |" in text
  assert "| VAE | 92.00 | 91.00 | 91.00 | 92.00 | 92.00 | +0.000 +- 0.000 |" in text
  with flagsaver.flagsaver(**{**settings, "grid_epochs": 3.0}):
    with pytest.raises(Exception, match="other numbers"):
      mnist_table.main(["mnist_table"])
  with flagsaver.flagsaver(**{**settings, "from_crvae_grid": ["criwa", "crvae_t4"]}):
    with pytest.raises(Exception, match="other numbers.*from_crvae_grid"):
      mnist_table.main(["mnist_table"])


def test_the_time_limit_runs_whole_jobs_only_skipping_ahead_to_one_that_fits(
    flags, monkeypatch, capsys):
  """Without --cut_to_fit a job that would pass --stop_after_minutes (by the --plan
  estimate: 60 s per epoch, 40 s per evaluation here, and a margin of
  EVAL_BATCH_MARGIN_S) is not started, and a model's training counts with its
  evaluation: a later ready job that fits runs, and the runner stops when none fits;
  nothing is left half done."""
  calls = []
  _fake_library(monkeypatch, calls)
  settings = dict(rows=["vae", "cvae"], lrs=["1e-3"], grid_epochs=2.0, num_epochs=5.0,
                  num_seeds=1, release=False, k_curve_rows=[], num_samples=20,
                  epoch_seconds=60.0, eval_samples_per_s=2e4)
  assert mnist_table.EVAL_BATCH_MARGIN_S == 30.0  # the numbers below assume it
  with flagsaver.flagsaver(stop_after_minutes=4.6, **settings):
    mnist_table.main(["mnist_table"])
  # vae's grid (2 min); its training (3 epochs to go) and evaluation (220 s) do not fit
  # in the 156 s left less the margin, cvae's grid run (120 s) does; then nothing fits
  assert calls == [("train", "vae_lr0.001_b1_s0", 2.0), ("train", "cvae_lr0.001_b1_s0", 2.0)]
  out = capsys.readouterr().out
  assert ("vae_lr0.001_b1_s0 (train -> 5 ep and its evaluations, about 4 min) does not "
          "fit in the 3 minutes left; running cvae_lr0.001_b1_s0 (train -> 2 ep) first"
          ) in out
  assert "stopping: no ready job fits in the 1 minutes left" in out
  assert [(s["epochs_from"], s["epochs_to"]) for s in tp.read_job(
      os.path.join(flags.root, "vae_lr0.001_b1_s0"))["train"]] == [(0, 2)]  # not cut
  calls.clear()
  with flagsaver.flagsaver(stop_after_minutes=4.4, **settings):
    mnist_table.main(["mnist_table"])  # vae's training and evaluation (220 s) fit in 234
  assert calls == [("train", "vae_lr0.001_b1_s0", 5.0), ("eval", "vae_lr0.001_b1_s0", 20, 10)]
  out = capsys.readouterr().out
  assert ("stopping: no ready job fits in the 1 minutes left before --stop_after_minutes "
          "(next: cvae_lr0.001_b1_s0, train -> 5 ep and its evaluations, about 4 min)\n"
          ) in out  # it fits in a whole run of this length: no advice
  calls.clear()
  with flagsaver.flagsaver(stop_after_minutes=3.0, **settings):
    mnist_table.main(["mnist_table"])  # cvae's 220 s fit in no 3-minute run
  assert calls == []
  assert ("about 4 min); it fits in no run of --stop_after_minutes=3: give it "
          "--cut_to_fit") in capsys.readouterr().out


def test_an_evaluation_pauses_at_the_time_limit_and_the_next_run_finishes_it(
    flags, monkeypatch, capsys):
  calls, deadlines, real_rates = [], [], tp.measured_rates
  _fake_library(monkeypatch, calls)
  finish = mnist_table.score  # the fake library's

  def score(config, wd, data, deadline=None):
    deadlines.append(deadline)
    if deadline is not None:  # as the library does past its deadline
      raise likelihood.EvaluationPaused(4, len(data.test_binary), "eval_partial.npz")
    finish(config, wd, data)  # writes the files
    return {"resumed_images": 4}

  monkeypatch.setattr(mnist_table, "score", score)
  settings = dict(rows=["vae"], lrs=["1e-3"], grid_epochs=1.0, num_epochs=2.0,
                  num_seeds=1, release=False, k_curve_rows=[], num_samples=20,
                  epoch_seconds=60.0)
  wd = os.path.join(flags.root, "vae_lr0.001_b1_s0")
  with flagsaver.flagsaver(stop_after_minutes=10.0, cut_to_fit=True,
                           **settings):  # 2 epochs: 2 of 10 min
    mnist_table.main(["mnist_table"])
  assert [c[0] for c in calls] == ["train", "train"] and deadlines[-1] is not None
  assert "paused: IS evaluation paused" in capsys.readouterr().out
  assert not tp.read_job(wd)["evals"]  # not finished, not recorded
  with flagsaver.flagsaver(stop_after_minutes=2.0, cut_to_fit=True,
                           **settings):  # under MIN_EVAL_MINUTES
    mnist_table.main(["mnist_table"])
  assert "stopping: less than 3 minutes left" in capsys.readouterr().out
  for leftover in (os.path.basename(mnist_family.resume_path(wd, 20, "best", 10)),
                   "eval_test_K20.json.tmp123"):
    open(os.path.join(wd, leftover), "wb").close()  # what a paused or killed run leaves
  with flagsaver.flagsaver(**settings):  # no limit: the evaluation finishes
    mnist_table.main(["mnist_table"])
  assert deadlines[-1] is None
  rec = tp.read_job(wd)
  (done,) = rec["evals"].values()
  assert "evals_paused" not in rec and done["num_images"] == 10
  # the paused run's share (4 images) and the finishing run's (the other 6)
  assert [s["images"] for s in done["segments"]] == [4, 6]
  assert done["seconds"] == pytest.approx(sum(s["seconds"] for s in done["segments"]))
  _, sps = real_rates(flags.root)  # the median of the two segments' own rates
  assert sps["vae"] == pytest.approx(np.median([20 * s["images"] / s["seconds"]
                                                for s in done["segments"]]))
  copied = os.listdir(os.path.join(flags.records, "vae_lr0.001_b1_s0"))
  assert "eval_test_K20.json" in copied  # the records hold finished work only
  assert not [f for f in copied if "partial" in f or ".tmp" in f]
  text = open(flags.output, encoding="utf-8").read()  # the Runs section names both runs
  assert re.search(r"test_all_K20: [\d.]+ min in 2 runs \(4 img, [\d.]+ min, \S+, "
                   r"[^;]+; 6 img, ", text), text


def test_records_match_a_protocol_that_gained_a_key(tmp_path):
  from experiments import table_records  # pylint: disable=g-import-not-at-top
  root, records = tmp_path / "runs", tmp_path / "records"
  for d, protocol in ((root, {"lrs": [1e-3], "from_crvae_grid": ["criwa"]}),
                      (records, {"lrs": [1e-3]})):
    d.mkdir()
    (d / "protocol.json").write_text(json.dumps(protocol))
  assert table_records.matching(str(root), str(records)) == str(records)
  (records / "protocol.json").write_text(json.dumps({"lrs": [3e-3]}))
  assert table_records.matching(str(root), str(records)) is None


@pytest.mark.parametrize("field, value, message", [
    ("rows", (), "rows: none given"), ("lrs", (), r"lrs=\[\]"),
    ("lrs", (1e-3, 0.0), "learning rates > 0"), ("lrs", (float("nan"),), "finite"),
    ("grid_epochs", 0.0, "grid_epochs=0.0"), ("grid_epochs", -2.0, "grid_epochs=-2.0"),
    ("num_epochs", float("nan"), "num_epochs=nan"), ("num_seeds", 0, "num_seeds=0"),
    ("num_samples", 0, "num_samples=0"), ("k_curve_images", 20_000, "k_curve_images")])
def test_a_protocol_with_impossible_numbers_is_refused(field, value, message):
  with pytest.raises(ValueError, match=message):
    tp.Protocol(**{field: value})


def test_a_damaged_record_is_named_by_its_real_path(tmp_path):
  root, records = tmp_path / "runs", tmp_path / "records"
  p = tp.Protocol(rows=("vae",), grid_epochs=2, num_epochs=4, release=False,
                  k_curve_rows=(), num_seeds=1)
  _fake_finished(str(records), p, lambda e, k: np.full(20, 90.0))
  root.mkdir()
  name = next(j.setting.name for j in tp.plan(p, str(records)) if j.stage == "train")
  job = records / name / "job.json"
  good = job.read_text()
  for damaged, message in ((good[:-20], "is damaged"), ('{"train": []}', r"lacks \['evals'\]")):
    job.write_text(damaged)
    with table_records.merged_root(str(root), str(records)) as (view, _):
      with pytest.raises(tp.RecordError, match=message) as e:
        table_report.collect(p, view)  # read through the view's links
    assert str(job) in str(e.value) and "mnist_table_view_" not in str(e.value)
  job.write_text(good)
  metrics = records / name / "metrics.jsonl"
  lines = metrics.read_text().splitlines(keepends=True)
  metrics.write_text("".join(lines) + '{"step": 99, "spl')  # a line being written
  assert tp.read_metrics(str(records / name), "valid") == [
      json.loads(l) for l in lines if '"valid"' in l]
  metrics.write_text(lines[0] + "garbage\n" + "".join(lines[1:]))  # damage, not a write
  with pytest.raises(tp.RecordError, match=f"{metrics}: line 2 is damaged"):
    tp.read_metrics(str(records / name), "valid")


def test_one_tiny_real_job_through_the_library(flags, monkeypatch):
  monkeypatch.setattr(mnist_table, "load_data", lambda config: make_tiny_data(num_eval=6))
  monkeypatch.setattr(mnist_table, "base_config", lambda row, scale: make_tiny_config(row))
  with flagsaver.flagsaver(rows=["vae"], lrs=["1e-3"], grid_epochs=1.0, num_epochs=2.0,
                           num_seeds=1, release=False, k_curve_rows=[], num_samples=2):
    mnist_table.main(["mnist_table"])
  wd = os.path.join(flags.root, "vae_lr0.001_b1_s0")
  epochs, elbo = tp.valid_curve(wd)
  assert list(epochs) == [1.0, 2.0] and np.isfinite(elbo).all()  # resumed, not restarted
  rec = tp.read_job(wd)
  assert [(s["epochs_from"], s["epochs_to"]) for s in rec["train"]] == [(0, 1), (1, 2)]
  nll = np.load(mnist_family.per_image_path(wd, 2))
  assert nll.shape == (6,) and np.isfinite(nll).all()
  text = open(flags.output, encoding="utf-8").read()
  assert f"| VAE | 0.001 | - | 1 of 1 | {stats.mean_and_stderr(nll)[0]:.2f} |" in text
  # experiments/logvar_range.py on the finished workdir (its own process: its --root flag
  # would clash with mnist_table's here), the test data in place of MNIST.
  tests = os.path.dirname(os.path.abspath(__file__))
  code = ("import sys; sys.path.insert(0, %r); from conftest import make_tiny_data; "
          "from crvae_jax.families import mnist; "
          "mnist.load_data = lambda config: make_tiny_data(num_eval=6); "
          "from experiments import logvar_range as m; from absl import app; "
          "app.run(m.main, argv=['logvar_range', '--root=%s'] + sys.argv[1:])"
          % (tests, flags.root))
  run = lambda *a: subprocess.run([sys.executable, "-c", code, *a], capture_output=True,
                                  text=True, timeout=300, cwd=os.path.dirname(tests))
  out = run()
  assert out.returncode == 0, out.stderr[-2000:]
  line = next(l for l in out.stdout.splitlines() if l.startswith("vae_lr0.001_b1_s0"))
  lo, hi = float(line.split()[3]), float(line.split()[5])  # "<row> q(z1|x) min A max B"
  assert "q(z1|x)" in line and np.isfinite([lo, hi]).all() and lo <= hi
  assert "min" in run("--checkpoint=latest").stdout
  bad = run("--checkpoint=bogus")
  assert bad.returncode != 0 and "--checkpoint" in bad.stderr
  empty = os.path.join(os.path.dirname(flags.root), "empty")
  os.makedirs(empty)
  bad = run(f"--root={empty}")  # nothing to scan: said, not an empty success
  assert bad.returncode != 0 and f"--root={empty} holds no workdir" in bad.stderr


def test_records_keep_the_table_when_the_runs_directory_is_lost(flags, monkeypatch):
  calls = []
  _fake_library(monkeypatch, calls)
  settings = dict(rows=["vae"], lrs=["1e-3"], grid_epochs=2.0, num_epochs=3.0,
                  num_seeds=1, release=False, k_curve_rows=[], num_samples=20,
                  epoch_seconds=60.0)
  with flagsaver.flagsaver(**settings):
    mnist_table.main(["mnist_table"])
  assert [c[0] for c in calls] == ["train", "train", "eval"]
  name = "vae_lr0.001_b1_s0"
  record = os.path.join(flags.records, name)
  assert sorted(os.listdir(record)) == sorted(
      ["job.json", "metrics.jsonl", "eval_test_K20.json"]  # (the fake writes no config)
      + [os.path.basename(mnist_family.per_image_path(record, 20, n))
         for n in mnist_family.PER_IMAGE_NAMES])
  # The record's metrics hold the validation curve (and the epoch scale) only.
  kept = [json.loads(l)["split"] for l in open(os.path.join(record, "metrics.jsonl"))]
  assert kept.count("train") == 1 and set(kept) == {"train", "valid"}
  np.testing.assert_array_equal(tp.valid_curve(record)[1],
                                tp.valid_curve(os.path.join(flags.root, name))[1])
  before = open(flags.output, encoding="utf-8").read()
  row = "| VAE | 0.001 | - | 1 of 1 | 95.00 |"
  assert row in before and "` (record) |" not in before
  shutil.rmtree(flags.root)  # the runs directory is lost between sessions
  with flagsaver.flagsaver(stage="report", **settings):
    mnist_table.main(["mnist_table"])
  after = open(flags.output, encoding="utf-8").read()
  assert row in after  # the finished row survives, read from its record ...
  assert f"| `{name}` (record) |" in after  # ... and says so
  assert "from the copies in" in after and "mnist_table_view_" not in after
  calls.clear()
  with flagsaver.flagsaver(**settings):  # the runner schedules from the records too:
    mnist_table.main(["mnist_table"])  # nothing is left to run
  assert not calls and row in open(flags.output, encoding="utf-8").read()
  # A model trained in its record but not yet evaluated trains again (the evaluation
  # needs its weights), from scratch to the budget: its grid run is not repeated.
  with open(os.path.join(record, "job.json"), encoding="utf-8") as f:
    rec = json.load(f)
  rec["evals"] = {}
  tp.write_job(record, rec)
  for f in glob.glob(os.path.join(record, "eval_test_K*")):
    os.remove(f)
  shutil.rmtree(flags.root)
  with flagsaver.flagsaver(max_jobs=1, **settings):
    mnist_table.main(["mnist_table"])
  assert calls == [("train", name, 3.0)]
  assert tp.valid_curve(os.path.join(flags.root, name))[0].tolist() == [1.0, 2.0, 3.0]
  assert tp.trained_epochs(tp.read_job(record)) == 3.0
  calls.clear()
  with flagsaver.flagsaver(**settings):
    mnist_table.main(["mnist_table"])
  assert [c[0] for c in calls] == ["eval"]
  report = open(flags.output, encoding="utf-8").read()
  assert "` (record) |" not in report
  # The record follows the new workdir and keeps the lost run it replaced (the grid
  # pilot's segment among it), which the report lists under Runs.
  now = tp.read_job(record)
  assert now.pop("replaced") == [rec]
  assert now == tp.read_job(os.path.join(flags.root, name))  # in step
  first = rec["train"][0]
  assert f"<br>replaced: {first['epochs_from']:g}->{first['epochs_to']:g} ep" in report
  # A root of another protocol (here another budget) neither reads nor writes them.
  kept = open(os.path.join(record, "job.json"), encoding="utf-8").read()
  assert os.path.exists(os.path.join(flags.records, "protocol.json"))
  calls.clear()
  other = os.path.join(os.path.dirname(flags.root), "other_root")
  with flagsaver.flagsaver(root=other, **{**settings, "num_epochs": 2.0}):
    mnist_table.main(["mnist_table"])
  assert [c[0] for c in calls] == ["train", "eval"]
  assert open(os.path.join(record, "job.json"), encoding="utf-8").read() == kept
  assert "` (record) |" not in open(flags.output, encoding="utf-8").read()


def test_a_model_trained_again_is_evaluated_again_whole(flags, monkeypatch):
  calls = []
  _fake_library(monkeypatch, calls)
  settings = dict(rows=["vae"], lrs=["1e-3"], grid_epochs=2.0, num_epochs=3.0,
                  num_seeds=1, release=False, k_curve_rows=["vae"], k_curve_samples=40,
                  k_curve_images=5, num_samples=20, epoch_seconds=60.0)
  name = "vae_lr0.001_b1_s0"
  with flagsaver.flagsaver(max_jobs=3, **settings):  # grid, training, headline eval
    mnist_table.main(["mnist_table"])
  assert [c[0] for c in calls] == ["train", "train", "eval"]
  record = os.path.join(flags.records, name)
  assert list(tp.read_job(record)["evals"]) == ["test_all_K20"]
  shutil.rmtree(flags.root)  # lost before the K check ran
  calls.clear()
  with flagsaver.flagsaver(**settings):
    mnist_table.main(["mnist_table"])
  # The K check needs the weights: the model trains again, and its headline evaluation
  # runs again too (the record's is of the lost model); the record is then replaced.
  assert calls == [("train", name, 3.0), ("eval", name, 20, 10), ("eval", name, 40, 5),
                   ("eval", name, 100, 5)]
  wd = os.path.join(flags.root, name)
  now = tp.read_job(record)
  lost = now.pop("replaced")  # the lost model's training and evaluation stay listed
  assert len(lost) == 1 and list(lost[0]["evals"]) == ["test_all_K20"]
  assert now == tp.read_job(wd)
  assert len(now["evals"]) == 3
  calls.clear()
  with flagsaver.flagsaver(**settings):
    mnist_table.main(["mnist_table"])
  assert not calls


def test_a_killed_training_segment_is_kept_as_interrupted(flags, monkeypatch):
  real_rates = tp.measured_rates
  calls = []
  _fake_library(monkeypatch, calls)
  fake_train = mnist_table.train

  def killed(config, wd, data):  # 1.5 epochs, saved on the signal, then the session ends
    del data
    calls.append(("train", os.path.basename(wd), config.train.num_epochs))
    _write_curve(wd, [-101.0])  # 10 steps per epoch
    with open(os.path.join(wd, "train_time.json"), "w", encoding="utf-8") as f:
      json.dump({"seconds": 42.0, "skipped_steps": 0, "invocations": 1, "step": 15}, f)
    raise KeyboardInterrupt

  settings = dict(rows=["vae"], lrs=["1e-3"], grid_epochs=2.0, num_epochs=3.0, num_seeds=1,
                  release=False, k_curve_rows=[], num_samples=20, max_jobs=1)
  monkeypatch.setattr(mnist_table, "train", killed)
  with flagsaver.flagsaver(**settings), pytest.raises(KeyboardInterrupt):
    mnist_table.main(["mnist_table"])
  wd = os.path.join(flags.root, "vae_lr0.001_b1_s0")
  rec = tp.read_job(wd)
  assert rec["train"] == [] and rec["running"]["epochs_from"] == 0.0
  assert rec["running"]["train_seconds_before"] == 0.0  # a fresh run
  monkeypatch.setattr(mnist_table, "train", fake_train)
  with flagsaver.flagsaver(**settings):
    mnist_table.main(["mnist_table"])
  rec = tp.read_job(wd)
  assert "running" not in rec
  # The killed segment ends, and the next starts, at the checkpoint saved on the signal.
  assert [(s["epochs_from"], s["epochs_to"], s.get("interrupted", False))
          for s in rec["train"]] == [(0, 1.5, True), (1.5, 2, False)]
  assert rec["train"][0]["commit"] and rec["train"][0]["seconds"] == 42.0
  text = open(flags.output, encoding="utf-8").read()
  assert "0->1.5 ep (interrupted; epochs and time to its last checkpoint), 0.7 min" in text
  assert "1.5->2 ep, " in text
  # The interrupted segment's guessed end is not a throughput measurement.
  rec["train"][1]["seconds"] = 30.0
  tp.write_job(wd, rec)
  per_epoch, _ = real_rates(flags.root)
  assert per_epoch == {"vae": 60.0}  # 30 s for half an epoch
  # A segment that shared the CPU counts only while the row has no quiet one.
  rec["train"][1]["load"] = tp.busy_load() + 1
  rec["train"].append({**rec["train"][1], "epochs_from": 2, "epochs_to": 3,
                       "seconds": 10.0, "load": 0.5})
  tp.write_job(wd, rec)
  assert real_rates(flags.root)[0] == {"vae": 10.0}
  rec["train"].pop()
  tp.write_job(wd, rec)
  assert real_rates(flags.root)[0] == {"vae": 60.0}
  # The median of the segments' own rates: a segment slowed by a pause (90 s for an
  # epoch) does not pull the estimate up, as a sum over segments would (37.3 s).
  rec["train"][1]["load"] = 0.5
  rec["train"] += [{**rec["train"][1], "epochs_from": 2 + i, "epochs_to": 3 + i,
                    "seconds": t} for i, t in enumerate((10.0, 90.0))]
  tp.write_job(wd, rec)
  assert real_rates(flags.root)[0] == {"vae": 60.0}  # 60 (half an epoch), 10, 90
  rec["train"][1]["seconds"] = 6.0  # 12 s per epoch
  tp.write_job(wd, rec)
  assert real_rates(flags.root)[0] == {"vae": 12.0}


def test_cpu_evaluations_decode_in_their_own_chunks_training_keeps_the_config():
  p = tp.Protocol(rows=("crvae",), num_epochs=20.0)
  s = tp.Setting("crvae", 1e-3, "T", 1.0, 0)
  base = mnist_table.base_config("crvae", "cpu")
  train = mnist_table.job_config(p, tp.Job("train", "crvae", "crvae", s, epochs=20.0))
  assert (train.eval.chunk_size, train.eval.batch_size) == (
      base.eval.chunk_size, base.eval.batch_size)
  ev = mnist_table.job_config(p, tp.Job("eval", "crvae", "crvae", s, num_samples=1000,
                                        report_k=100))
  assert (ev.eval.chunk_size, ev.eval.batch_size) == mnist_table.CPU_EVAL_CHUNK_AND_BATCH
  assert (ev.eval.num_samples, ev.eval.report_k) == (1000, 100)
  assert ev.optim.learning_rate == 1e-3 and ev.train.num_epochs == 20.0


def test_the_k_check_covers_every_row_by_default_each_against_the_vae(flags, monkeypatch):
  calls = []
  _fake_library(monkeypatch, calls)
  settings = dict(rows=["vae", "cvae"], lrs=["1e-3"], grid_epochs=1.0, num_epochs=2.0,
                  num_seeds=1, release=False, k_curve_images=4, num_samples=20,
                  k_curve_samples=50, epoch_seconds=60.0)  # k_curve_rows: the default
  with flagsaver.flagsaver(**settings):
    mnist_table.main(["mnist_table"])
  kchecks = [c for c in calls if c[0] == "eval" and c[2] == 50]
  assert [c[1] for c in kchecks] == ["vae_lr0.001_b1_s0", "cvae_lr0.001_b1_s0"]
  text = open(flags.output, encoding="utf-8").read()
  section = text[text.index("## The K check"):]
  assert "| cVAE | pending" not in section and "| VAE | pending" not in section
  assert re.search(r"- Paired difference VAE - cVAE on these images, by K: K=1 [+-][\d.]+ "
                   r"\+- [\d.]+; K=10 ", section), section


def test_replaced_runs_keep_a_run_trained_again_not_one_continued():
  seg = lambda a, b, date: {"commit": "abc", "date": date, "epochs_from": a,
                            "epochs_to": b}
  pilot = {"train": [seg(0.0, 5.0, "d1")], "evals": {}}
  continued = {"train": [seg(0.0, 5.0, "d1"), seg(5.0, 31.0, "d2")], "evals": {}}
  assert table_records.replaced_runs(pilot, continued) == []
  again = {"train": [seg(0.0, 31.0, "d3")], "evals": {}}
  assert table_records.replaced_runs(pilot, again) == [pilot]
  # An earlier replaced run is carried forward when the record is written again.
  kept = {**again, "replaced": [pilot]}
  assert table_records.replaced_runs(kept, {**again, "evals": {"x": {}}}) == [pilot]


def test_backfill_from_git_recovers_a_record_replaced_before_replaced_existed(tmp_path):
  import subprocess  # pylint: disable=g-import-not-at-top
  repo = tmp_path / "repo"
  record = repo / "records" / "crvae_lr0.003_lstmT_b1_s0"
  record.mkdir(parents=True)
  git = lambda *a: subprocess.run(["git", *a], cwd=repo, check=True, capture_output=True)
  git("init", "-q")
  seg = lambda a, b, date: {"commit": "c", "date": date, "epochs_from": a,
                            "epochs_to": b, "seconds": 60.0, "machine": "m",
                            "command": "x", "load": 0.0}
  pilot = {"train": [seg(0.0, 5.0, "d1")], "evals": {}}
  continued = {"train": pilot["train"] + [seg(5.0, 31.0, "d2")], "evals": {}}
  again = {"train": [seg(0.0, 31.0, "d3")], "evals": {"test_all_K1000": {}}}
  for version in (pilot, continued, again):  # as the old runner committed them
    tp.write_job(str(record), version)
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "v")
  assert table_records.backfill_from_git(str(repo / "records")) == {record.name: 1}
  now = tp.read_job(str(record))
  assert now.pop("replaced") == [continued] and now == again
  # Idempotent: run again, the same one replaced run.
  assert table_records.backfill_from_git(str(repo / "records")) == {record.name: 1}
  # A record whose own entry for that run holds more (work after the last commit) keeps
  # its entry, once.
  later = {**continued, "evals": {"test_all_K1000": {"date": "d4"}}}
  tp.write_job(str(record), {**again, "replaced": [later]})
  assert table_records.backfill_from_git(str(repo / "records")) == {record.name: 1}
  assert tp.read_job(str(record))["replaced"] == [later]


def test_new_workdirs_take_the_kernel_flags_a_started_one_keeps_its_own(flags, monkeypatch):
  calls, kernels = [], {}
  _fake_library(monkeypatch, calls)
  fake_train = mnist_table.train

  def train(config, wd, data):  # as the engine: config.json is written when a run starts
    kernels.setdefault(os.path.basename(wd), []).append(
        (config.model.conv_impl, config.model.fused_backward))
    if checkpoints.read_config_json(wd) is None:
      os.makedirs(wd, exist_ok=True)
      checkpoints.write_config(wd, config)
    fake_train(config, wd, data)

  monkeypatch.setattr(mnist_table, "train", train)
  settings = dict(rows=["vae"], lrs=["1e-3", "3e-3"], grid_epochs=1.0, num_epochs=2.0,
                  num_seeds=1, release=False, k_curve_rows=[], num_samples=20,
                  epoch_seconds=60.0)
  # A run started before with the old kernels (its config.json says so).
  started = os.path.join(flags.root, "vae_lr0.001_b1_s0")
  os.makedirs(started)
  old = mnist_table.base_config("vae", "cpu")
  old.model.conv_impl, old.model.fused_backward = "auto", False
  checkpoints.write_config(started, old)
  with flagsaver.flagsaver(conv_impl="xla", fused_backward=True, **settings):
    mnist_table.main(["mnist_table"])
  assert set(kernels.pop(os.path.basename(started))) == {("auto", False)}
  assert kernels and all(set(k) == {("xla", True)} for k in kernels.values()), kernels
  # Each run's machine line names its kernels; its evaluation used the same ones.
  rec = tp.read_job(started)
  assert all("conv cpu, malloc" in s["machine"] for s in rec["train"]), rec["train"]
  evals = [r for v in rec["evals"].values() for r in v.get("segments", [v])]
  assert evals and all(r["machine"].endswith(f"conv cpu, {host_memory.description()}")
                       for r in evals), rec["evals"]
  other = tp.read_job(os.path.join(flags.root, "vae_lr0.003_b1_s0"))
  assert all("conv xla + fused backward" in s["machine"] for s in other["train"])


def test_rates_prefer_the_segments_run_on_this_cpu_model(tmp_path):
  def job(name, row, segments, evals):
    wd = tmp_path / name
    wd.mkdir()
    tp.write_job(str(wd), {"setting": {"row": row}, "train": segments, "evals": evals})

  seg = lambda a, b, s, machine, load=0.5: {"epochs_from": a, "epochs_to": b, "seconds": s,
                                            "machine": machine, "load": load}
  fast, slow = "CPU B (x86_64), 2 cores", "CPU A (x86_64), 2 cores"
  # crvae: trained on both CPU models; the one on CPU B also shared the CPU
  job("crvae_s0", "crvae", [seg(0, 1, 100.0, slow), seg(1, 2, 110.0, slow),
                            seg(2, 3, 40.0, f"{fast}, jax 0.10.2 cpu x1", load=9.0)],
      {"test_all_K20": {"num_samples": 20, "num_images": 10, "seconds": 0.0, "segments": [
          {"seconds": 2.0, "images": 10, "machine": slow},
          {"seconds": 1.0, "images": 10, "machine": fast}]}})
  job("vae_s0", "vae", [seg(0, 1, 30.0, slow)], {})  # only on the other model
  epoch_s, sps = tp.measured_rates(str(tmp_path), machine=fast)
  assert epoch_s == {"crvae": 40.0, "vae": 30.0}  # this model's (busy) segment first
  assert sps == {"crvae": 200.0}
  epoch_s, sps = tp.measured_rates(str(tmp_path), machine=slow)
  assert epoch_s == {"crvae": 105.0, "vae": 30.0} and sps == {"crvae": 100.0}
  # records from before machine lines named the CPU model count where nothing else does
  epoch_s, _ = tp.measured_rates(str(tmp_path), machine="CPU C (x86_64), 2 cores")
  assert epoch_s == {"crvae": 105.0, "vae": 30.0}  # the quiet segments of any model
