"""The notebook API: `crvae_jax.restore(workdir)` rebuilds a trained MNIST run from its
config.json alone and samples, reconstructs, encodes and scores it, agreeing with what
experiments.main wrote for the same run."""

import os

import numpy as np
import pytest

import crvae_jax
from crvae_jax import sampling
from crvae_jax.families import mnist as mnist_family


def test_restore_samples_reconstructs_encodes_and_scores_like_the_cli(cli_workdir,
                                                                     tiny_data):
  workdir, config = cli_workdir  # trained by main.py (tiny config, 4 steps), read-only
  run = crvae_jax.restore(str(workdir))
  assert run.family == "mnist" and run.step == 4  # the best checkpoint
  assert run.config.model.to_dict() == config.model.to_dict()

  samples = run.sample(3, seed=0)
  assert samples.shape == (3, 28, 28) and 0 <= samples.min() and samples.max() <= 1
  np.testing.assert_array_equal(samples, run.sample(3, seed=0))  # seeded
  assert np.any(samples != run.sample(3, seed=1))

  images = tiny_data.test_binary[:5]
  z = run.encode(images)
  assert z.shape == (5,) + run.model.latent_shape and np.all(np.isfinite(z))
  recon = run.reconstruct(images)
  assert recon.shape == (5, 28, 28)
  # The same pictures `--mode=sample` draws from the same checkpoint.
  np.testing.assert_allclose(
      recon, sampling.reconstruction_means(run.model, run.variables, images), atol=1e-6)

  # Importance-sampled NLL: the CLI's --mode=evaluate scored the same checkpoint with
  # the same seed and K (config.eval) on two devices; one device gives the same values.
  k = config.eval.num_samples
  nll = run.nll(tiny_data.test_binary, num_samples=k, chunk_size=config.eval.chunk_size)
  saved = np.load(mnist_family.per_image_path(str(workdir), k, "nll"))
  np.testing.assert_allclose(nll, saved, rtol=1e-5)


def test_restore_of_a_missing_workdir_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="no such workdir: .*nowhere"):
    crvae_jax.restore(str(tmp_path / "nowhere"))
  assert not os.path.exists(tmp_path / "nowhere")
