"""--mode=evaluate with eval.estimator='ais', and experiments/estimator_gap.py, on the tiny
trained workdir of the session fixture `cli_workdir` (tests/conftest.py)."""

import json
import os
import shutil

import numpy as np
import pytest

from crvae_jax import ais
from crvae_jax.families import mnist as mnist_family
from experiments import estimator_gap
from tests.conftest import make_tiny_data

TINY_AIS = dict(num_steps=3, num_chains=2, leapfrog_steps=2, step_size=0.05)


def test_evaluate_with_ais_writes_its_own_per_image_files(cli_workdir, tmp_path):
  workdir, config = cli_workdir
  workdir = shutil.copytree(workdir, tmp_path / "run")  # the fixture is read-only
  config = config.copy_and_resolve_references()
  config.eval.estimator = "ais"
  config.eval.ais.update(TINY_AIS)
  summary = mnist_family.evaluate(config, str(workdir), data=make_tiny_data())
  tag = ais.settings_from_config(config.eval.ais).tag
  assert tag == "AIS3x2-prior"
  per_image = {name: np.load(mnist_family.per_image_path(str(workdir), tag, name))
               for name in mnist_family.PER_IMAGE_NAMES}
  with open(os.path.join(workdir, f"eval_test_{tag}.json"), encoding="utf-8") as f:
    saved = json.load(f)
  assert saved["estimator"] == "ais" and saved["num_samples"] == 2
  assert 0 <= saved["ais_acceptance_mean"] <= 1
  np.testing.assert_allclose(per_image["nll"].mean(), summary["nll"])
  assert np.all(per_image["nll"] <= per_image["neg_elbo"] + 1e-6)  # logmeanexp >= mean
  # The importance-sampling files of the same workdir are still there, untouched.
  is_nll = np.load(mnist_family.per_image_path(str(workdir), config.eval.num_samples))
  np.testing.assert_array_equal(
      is_nll, np.load(mnist_family.per_image_path(str(cli_workdir[0]),
                                                  config.eval.num_samples)))
  assert len(is_nll) == len(per_image["nll"])


def test_estimator_gap_smoke(cli_workdir, tmp_path, monkeypatch):
  workdir, _ = cli_workdir
  monkeypatch.setattr(mnist_family, "load_data", lambda cfg: make_tiny_data())
  out = tmp_path / "gap.md"
  results = estimator_gap.main([
      f"--workdirs={workdir},{workdir}", "--labels=a,b", "--num_images=3",
      "--is_k=4", "--ais_steps=3", "--bdmc_images=2", "--bdmc_steps=3", "--chains=2",
      "--leapfrog=2", "--batch_size=2", f"--out={out}", f"--npy_dir={tmp_path / 'npy'}"])
  text = out.read_text()
  assert "## Answers" in text and "IS K=4" in text and "AIS T=3" in text
  assert len(results) == 2 and results[0]["is"][4].shape == (3,)
  lower, upper = results[0]["bdmc"][3]  # NLLs of 2 simulated images
  assert lower.shape == upper.shape == (2,) and np.all(np.isfinite(lower - upper))
  # The same run under two labels: identical estimates (the randomness is keyed).
  np.testing.assert_array_equal(results[0]["ais"][3][0], results[1]["ais"][3][0])
  assert os.path.exists(tmp_path / "npy" / "a_AIS_T3_nll.npy")


def test_estimator_gap_resumes_from_finished_estimates(cli_workdir, tmp_path, monkeypatch):
  """A rerun reuses every estimate a killed run finished; other settings recompute."""
  workdir, _ = cli_workdir
  monkeypatch.setattr(mnist_family, "load_data", lambda cfg: make_tiny_data())
  argv = [f"--workdirs={workdir}", "--labels=a", "--num_images=3", "--is_k=4",
          "--ais_steps=3", "--bdmc_images=2", "--bdmc_steps=3", "--chains=2",
          "--leapfrog=2", "--batch_size=2", f"--out={tmp_path / 'gap.md'}",
          f"--npy_dir={tmp_path / 'npy'}"]
  real_bdmc = ais.bdmc

  def killed(*args, **kwargs):
    raise KeyboardInterrupt("the session ended")
  monkeypatch.setattr(ais, "bdmc", killed)
  with pytest.raises(KeyboardInterrupt):
    estimator_gap.main(argv)
  cached = sorted(os.listdir(tmp_path / "npy" / "cache"))
  assert cached == ["a_AIS_T=3.npz", "a_IS_K=4.npz"], cached

  # The rerun must not recompute IS or forward AIS (BDMC runs AIS itself: allowed there).
  real_ais, inside_bdmc = ais.estimate_log_likelihood, []

  def must_not_run(*args, **kwargs):
    raise AssertionError("recomputed a cached estimate")

  def ais_only_inside_bdmc(*args, **kwargs):
    if not inside_bdmc:
      must_not_run()
    return real_ais(*args, **kwargs)

  def bdmc(*args, **kwargs):
    inside_bdmc.append(True)
    try:
      return real_bdmc(*args, **kwargs)
    finally:
      inside_bdmc.clear()
  monkeypatch.setattr(ais, "bdmc", bdmc)
  monkeypatch.setattr(ais, "estimate_log_likelihood", ais_only_inside_bdmc)
  monkeypatch.setattr(estimator_gap.likelihood, "estimate_log_likelihood", must_not_run)
  results = estimator_gap.main(argv)
  assert results[0]["is"][4].shape == (3,) and 3 in results[0]["bdmc"]
  assert "a_BDMC_T=3.npz" in os.listdir(tmp_path / "npy" / "cache")

  # Another seed is another experiment: the cached entries are not reused.
  with pytest.raises(AssertionError, match="recomputed a cached estimate"):
    estimator_gap.main(argv + ["--seed=1"])


def test_estimator_gap_recomputes_a_damaged_cache_entry(cli_workdir, tmp_path, monkeypatch):
  workdir, _ = cli_workdir
  monkeypatch.setattr(mnist_family, "load_data", lambda cfg: make_tiny_data())
  argv = [f"--workdirs={workdir}", "--labels=a", "--num_images=2", "--is_k=4",
          "--ais_steps=", "--bdmc_images=0", "--batch_size=2",
          f"--out={tmp_path / 'gap.md'}", f"--npy_dir={tmp_path / 'npy'}"]
  first = estimator_gap.main(argv)[0]["is"][4]
  entry = tmp_path / "npy" / "cache" / "a_IS_K=4.npz"
  for damage in (b"", entry.read_bytes()[:100]):  # empty; truncated
    entry.write_bytes(damage)
    again = estimator_gap.main(argv)[0]["is"][4]
    np.testing.assert_array_equal(again, first)  # recomputed (the randomness is keyed)
    with np.load(entry) as f:  # and rewritten whole
      assert "meta" in f.files
  # A reused entry is marked in the report, with when and where it was measured.
  estimator_gap.main(argv)
  text = (tmp_path / "gap.md").read_text()
  assert "| a | IS K=4 |" in text and " * |" in text and "- a IS K=4: " in text


def test_answers_call_a_difference_within_noise_and_measure_the_bias():
  rng = np.random.default_rng(0)
  n, base = 50, 90 + 5 * rng.normal(size=50)
  noise = lambda sd: sd * rng.normal(size=n)
  a = {"label": "vae", "ais": {1000: (base + noise(0.1), 0.7)},
       "is": {100: base + 3 + noise(0.1), 1000: base + 2 + noise(0.1)},
       "bdmc": {100: (np.full(4, 101.0), np.full(4, 100.0))}}
  # b is 2 nats better by AIS; IS at K=100 sees only a noisy 0.1, at K=1000 the 2 nats.
  b = {"label": "crvae", "ais": {1000: (base - 2 + noise(0.1), 0.7)},
       "is": {100: base + 2.9 + noise(2.0), 1000: base + noise(0.1)},
       "bdmc": {}}
  text = "\n".join(estimator_gap.answers(a, b))
  assert "AIS T=1000: -2.0" in text
  assert "(crvae lower than vae)" in text
  k100 = next(l for l in text.splitlines() if l.startswith("| IS K=100 |"))
  k1000 = next(l for l in text.splitlines() if l.startswith("| IS K=1000 |"))
  assert "| within noise | cannot tell |" in k100
  assert "| lower | yes |" in k1000
  bias = float(k100.split("|")[5].split("+-")[0])
  assert bias == pytest.approx(1.9, abs=0.8)  # K=100 misses most of the difference
  assert "vae 1.00 +- 0.00 nats at T=100" in text
