"""The importance-sampled estimator does not depend on how the work is cut up."""

import jax
import numpy as np
import pytest

from crvae_jax import likelihood, objectives
from crvae_jax.train import parallel, setup


@pytest.fixture(scope="module")
def tiny_model():
  from conftest import make_tiny_config, make_tiny_data  # pylint: disable=g-import-not-at-top
  config = make_tiny_config()
  model = setup.build_model(config)
  return model, setup.init_variables(model, 0), make_tiny_data(num_eval=7).test_binary


def _estimate(tiny_model, **kw):
  model, variables, images = tiny_model
  args = dict(num_samples=6, chunk_size=4, batch_size=4, report_k=3, seed=0,
              progress=False)
  args.update(kw)
  mesh = parallel.make_mesh(args.pop("devices", 2))
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
  mesh = parallel.make_mesh(2)
  args = (parallel.replicate(mesh, variables), parallel.shard_batch(mesh, images[:4]), 0,
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
  model = setup.build_model(config)
  variables = setup.init_variables(model, 0)
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
