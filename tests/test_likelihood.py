"""The importance-sampled estimator does not depend on how the work is cut up."""

import math
import os

import jax
import numpy as np
import pytest

from crvae_jax import likelihood, objectives
from crvae_jax import sharding
from crvae_jax.families import mnist as mnist_family


@pytest.fixture(scope="module")
def tiny_model():
  from conftest import make_tiny_config, make_tiny_data  # pylint: disable=g-import-not-at-top
  config = make_tiny_config()
  model = mnist_family.build_model(config)
  return model, mnist_family.init_variables(model, 0), make_tiny_data(num_eval=7).test_binary


def _estimate(tiny_model, **kw):
  model, variables, images = tiny_model
  args = dict(num_samples=6, chunk_size=4, batch_size=4, report_k=3, seed=0,
              progress=False)
  args.update(kw)
  mesh = sharding.make_mesh(args.pop("devices", 2))
  return likelihood.estimate_log_likelihood(model, variables, images, mesh, **args)


@pytest.fixture(scope="module")
def reference(tiny_model):
  """The estimate with `_estimate`'s default cut (K=6, chunk 4, batch 4, 2 devices):
  computed once, checked by several tests (one compiled estimator)."""
  return _estimate(tiny_model)


def test_chunk_batch_and_device_count_do_not_change_the_estimate(tiny_model, reference):
  ref = reference
  for kw in (dict(chunk_size=6), dict(chunk_size=1), dict(batch_size=2),
             dict(devices=1, batch_size=7)):
    other = _estimate(tiny_model, **kw)
    for a, b in zip(ref[:4], other[:4]):
      np.testing.assert_allclose(a, b, rtol=1e-5, err_msg=str(kw))


def test_a_paused_evaluation_resumes_to_the_same_numbers(tiny_model, reference, tmp_path,
                                                        monkeypatch):
  resume = str(tmp_path / "eval_partial.npz")
  # a deadline already passed: the first batch (4 of 7 images) runs, then it pauses
  with pytest.raises(likelihood.EvaluationPaused, match="after 4 of 7 images") as paused:
    _estimate(tiny_model, resume_file=resume, deadline=-math.inf)
  assert (paused.value.done, paused.value.resumed) == (4, 0)
  assert likelihood.saved_images(resume) == 4
  resumed = _estimate(tiny_model, resume_file=resume)
  assert resumed.resumed == 4
  for name in ("elbo", "log_px_k1", "log_px_report", "log_px"):  # bit for bit
    np.testing.assert_array_equal(getattr(resumed, name), getattr(reference, name))
  # not read for other settings (another seed) or other weights: all 7 scored anew
  model, variables, images = tiny_model
  other = _estimate(tiny_model, resume_file=resume, seed=1)
  assert other.resumed == 0 and not np.array_equal(other.log_px, reference.log_px)
  moved = jax.tree.map(lambda a: a * 1.01, variables)
  assert _estimate((model, moved, images), resume_file=resume).resumed == 0
  likelihood.remove_resume_file(resume)
  assert not os.path.exists(resume)
  # saved as it goes (here after every batch), so a kill loses at most SAVE_EVERY_S
  monkeypatch.setattr(likelihood, "SAVE_EVERY_S", 0.0)
  _estimate(tiny_model, resume_file=resume)
  assert likelihood.saved_images(resume) == 4  # the last save: before the last batch
  for junk in (b"", b"not an npz"):  # an unreadable file is ignored, not an error
    with open(resume, "wb") as f:
      f.write(junk)
    assert likelihood.saved_images(resume) == 0
    assert _estimate(tiny_model, resume_file=resume).resumed == 0
  with pytest.raises(ValueError, match="needs a resume_file"):
    _estimate(tiny_model, deadline=0.0)


def test_every_image_is_scored_once(reference):
  res = reference  # batch_size=4, 7 images: last batch padded
  assert res.log_px.shape == (7,)
  assert np.all(np.isfinite(res.log_px))
  # Padding rows would be all-zero images; no two real estimates may be a copy.
  assert len(np.unique(res.log_px)) == 7


def test_bounds_are_ordered_and_seeded(tiny_model, reference):
  # K=6 (the reference cut): the same compiled estimator as the tests above.
  res = reference
  assert np.all(res.log_px >= res.elbo - 1e-4)  # logmeanexp >= mean
  again = _estimate(tiny_model)  # a second, independent call with the same seed
  np.testing.assert_array_equal(res.log_px, again.log_px)
  other_seed = _estimate(tiny_model, seed=1)
  assert not np.allclose(res.log_px, other_seed.log_px)


def test_first_sample_is_the_models_own_log_weight(tiny_model, reference):
  # The K=1 term equals log p(x|z) + log p(z) - log q(z|x) computed by the model with
  # the same noise: the estimator and the training objective share one definition.
  model, variables, images = tiny_model
  res = reference
  from crvae_jax import randomness  # pylint: disable=g-import-not-at-top
  keys = randomness.example_keys(jax.random.key(0), np.arange(len(images)))
  eps1, eps2 = randomness.latent_noise(keys, np.arange(1), model.latent_shape, model.top_dim)
  out = model.apply(variables, images[..., None].astype(np.float32), eps1, eps2)
  np.testing.assert_allclose(res.log_px_k1, objectives.log_weights(out)[:, 0], rtol=1e-5)


def test_working_memory_does_not_grow_with_k(tiny_model):
  # Samples are streamed in chunks through a running log-sum-exp: the compiled
  # estimator's scratch memory is the same for K = 100 and K = 10,000.
  model, variables, images = tiny_model
  mesh = sharding.make_mesh(2)
  args = (sharding.replicate(mesh, variables), sharding.shard_batch(mesh, images[:4]), 0,
          jax.random.key(0))
  temp = {}
  for k in (100, 10_000):
    estimator = likelihood.make_estimator(model, mesh, num_samples=k, chunk_size=32)
    temp[k] = estimator.lower(*args).compile().memory_analysis().temp_size_in_bytes
  assert temp[100] > 0
  assert temp[10_000] <= 1.1 * temp[100], temp


@pytest.mark.parametrize("row", ["vae", "cvae", "crvae_inference", "crvae_generation",
                                 "crvae_2layer"])
def test_every_variant_is_scored_and_k1_is_the_training_bound(row):
  from conftest import make_tiny_config, make_tiny_data  # pylint: disable=g-import-not-at-top
  config = make_tiny_config(row)
  model = mnist_family.build_model(config)
  variables = mnist_family.init_variables(model, 0)
  images = make_tiny_data(num_eval=4).test_binary
  res = _estimate((model, variables, images), num_samples=4, chunk_size=2, report_k=2)
  assert np.all(np.isfinite(res.log_px)) and np.all(res.log_px >= res.elbo - 1e-4)
  from crvae_jax import randomness  # pylint: disable=g-import-not-at-top
  keys = randomness.example_keys(jax.random.key(0), np.arange(len(images)))
  eps1, eps2 = randomness.latent_noise(keys, np.arange(1), model.latent_shape, model.top_dim)
  out = model.apply(variables, images[..., None].astype(np.float32), eps1, eps2)
  # The crIWA training objective at k = 1 is the estimator's first term.
  np.testing.assert_allclose(res.log_px_k1, objectives.iwae_bound(out).bound, rtol=1e-5)
  if row == "crvae_2layer":  # sampled KL in the ELBO objective too: the same number
    weights = objectives.block_weights(config.model.num_blocks, 1.0, None)
    np.testing.assert_allclose(res.log_px_k1, objectives.elbo(out, weights).bound,
                               rtol=1e-5)


def _direct(log_w, k):
  """log (1/k) sum_{j<k} exp(log_w[:, j]), in float64: the estimate by definition."""
  log_w = np.asarray(log_w, np.float64)[:, :k]
  m = log_w.max(-1)
  return m + np.log(np.exp(log_w - m[:, None]).sum(-1)) - np.log(k)


def test_streamed_estimates_equal_a_direct_logsumexp_for_every_cut():
  # Every (K, chunk, report_k) of a small grid: chunks that divide K and chunks that do
  # not, report_k below, at and above K. The chunked, masked log-sum-exp against the
  # definition. The table's entries past K (what the last chunk reads when it overruns
  # K) are huge, so counting one of them moves an estimate by ~1000 nats.
  rng = np.random.default_rng(0)
  b = 3
  for k in (1, 4, 5):
    table = rng.normal(-90.0, 5.0, (b, 2 * k)).astype(np.float32)
    table[:, k:] = 1000.0
    for chunk in range(1, k + 1):
      for report_k in sorted({2, k, 100}):
        estimate = jax.jit(lambda t, c=chunk, r=report_k, k=k: likelihood.stream_log_weights(
            lambda ids: t[:, ids], jax.numpy.zeros(b), num_samples=k, chunk_size=c,
            report_k=r))
        out = np.asarray(estimate(table))  # [b, 4]
        cut = f"K={k} chunk={chunk} report_k={report_k}"
        np.testing.assert_allclose(out[:, 0], table[:, :k].mean(-1), rtol=1e-5,
                                   err_msg=cut)
        np.testing.assert_allclose(out[:, 1], table[:, 0], rtol=1e-6, err_msg=cut)
        np.testing.assert_allclose(out[:, 2], _direct(table, min(report_k, k)),
                                   rtol=1e-5, err_msg=cut)
        np.testing.assert_allclose(out[:, 3], _direct(table, k), rtol=1e-5, err_msg=cut)


def test_model_estimates_equal_a_direct_logsumexp_of_its_log_weights(tiny_model):
  # End to end on the tiny model, with the cut of the bug report (K=5, chunk 3,
  # report_k 100 > K: the padding sample used to be counted in the report_k figure).
  model, variables, images = tiny_model
  from crvae_jax import randomness  # pylint: disable=g-import-not-at-top
  keys = randomness.example_keys(jax.random.key(0), np.arange(len(images)))
  eps1, eps2 = randomness.latent_noise(keys, np.arange(5), model.latent_shape, model.top_dim)
  out = jax.jit(model.apply)(variables, images[..., None].astype(np.float32), eps1, eps2)
  log_w = np.asarray(objectives.log_weights(out))  # [N, 5]
  res = _estimate(tiny_model, num_samples=5, chunk_size=3, report_k=100)
  assert res.report_k == 5
  np.testing.assert_allclose(res.log_px, _direct(log_w, 5), rtol=1e-5)
  np.testing.assert_allclose(res.log_px_report, _direct(log_w, 5), rtol=1e-5)
  np.testing.assert_allclose(res.elbo, log_w.mean(-1), rtol=1e-5)
