"""Prior samples scored by their SSIM with the most similar training image: the search
equals masked_ssim against every reference, every model decodes the same z, and the
pairs grid shows each sample beside the image it was scored against."""

import flax.linen as nn
import numpy as np
import pytest

from crvae_jax import image_metrics, prior_samples


class ScaledPrior(nn.Module):
  """decode(z) = scale * tanh(z): a 'model' whose prior samples are known from z."""
  scale: float = 1.0
  latent_shape: tuple = (16, 16, 3)

  def decode(self, z):
    return self.scale * nn.tanh(z)


def _images(n, shape=(16, 16, 3), seed=0):
  return np.random.default_rng(seed).uniform(-1, 1, (n,) + shape).astype(np.float32)


def test_most_similar_is_the_best_masked_ssim_over_the_references():
  x, refs = _images(5), _images(7, seed=1)
  refs[3] = x[2]  # an exact copy: SSIM 1
  best, index = image_metrics.most_similar(x, refs)
  whole = np.ones((len(refs), 16, 16, 1))
  brute = np.stack([image_metrics.masked_ssim(np.repeat(xi[None], len(refs), 0), refs, whole)
                    for xi in x])  # [5, 7]
  np.testing.assert_array_equal(index, brute.argmax(1))
  np.testing.assert_allclose(best, brute.max(1), rtol=1e-9)
  assert index[2] == 3 and best[2] == pytest.approx(1.0)
  with pytest.raises(ValueError, match=r"one image shape, got \(5, 16, 16, 3\) and "
                     r"\(2, 16, 16, 1\)"):
    image_metrics.most_similar(x, refs[:2, ..., :1])


def test_every_model_decodes_the_same_z_and_is_scored_against_the_references():
  models = {"full": (ScaledPrior(1.0), {}), "half": (ScaledPrior(0.5), {})}
  refs, held = _images(9, seed=2), _images(5, seed=3)
  record, drawn = prior_samples.score(models, refs, held, num_samples=6, seed=4)
  full, half = drawn["full"][0], drawn["half"][0]
  assert full.shape == (6, 16, 16, 3)
  np.testing.assert_allclose(half, 0.5 * full, rtol=1e-6)  # the same z
  for label, (x, index) in drawn.items():
    ssim, best_index = image_metrics.most_similar(x, refs)
    np.testing.assert_allclose(record["models"][label]["ssim_per_sample"], ssim)
    np.testing.assert_array_equal(index, best_index)
  np.testing.assert_allclose(record["held_out"]["ssim_per_image"],
                             image_metrics.most_similar(held, refs)[0])
  assert (record["num_samples"], record["num_references"], record["seed"]) == (6, 9, 4)
  # Another seed draws other z.
  _, other = prior_samples.score(models, refs, held, num_samples=6, seed=5)
  assert not np.allclose(other["full"][0], full)
  # The grid: per model a row of (sample, its most similar reference) pairs in [0, 1].
  grid = prior_samples.pairs(drawn, refs, 2)
  assert grid.shape == (2 * 2 * 2, 16, 16, 3)
  np.testing.assert_allclose(grid[0], (full[0] + 1) / 2, rtol=1e-6)
  np.testing.assert_allclose(grid[1], (refs[drawn["full"][1][0]] + 1) / 2, rtol=1e-6)
  np.testing.assert_allclose(grid[4], (half[0] + 1) / 2, rtol=1e-6)
