"""Held-out reconstruction error: exact MSE / PSNR of a model whose reconstruction is
known, standard errors and the paired difference, and a tiny random crVAE-GAN scored per
image whatever the batch size."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from crvae_jax import reconstruction
from crvae_jax.models.channel_recurrent import Gaussian
from crvae_jax.models.rgb import RgbVAE


class HalfVAE(nn.Module):
  """q(z | x) has mean x; decode(z) = z / 2: the reconstruction of x is x / 2."""

  def encode(self, x):
    return Gaussian(x, x * 0)

  def decode(self, z):
    return 0.5 * z


def _images(n, seed=0):
  return np.random.default_rng(seed).uniform(-1, 1, (n, 64, 64, 3)).astype(np.float32)


def test_mse_and_psnr_of_a_known_reconstruction():
  x = _images(5)
  errors = reconstruction.reconstruction_errors(HalfVAE(), {}, x, batch_size=2)
  # In [0, 1] units: (x/2 + 1)/2 - (x + 1)/2 = -x/4.
  expected = np.square(x / 4).mean((1, 2, 3))
  np.testing.assert_allclose(errors["mse"], expected, rtol=1e-5)
  np.testing.assert_allclose(errors["psnr"], 10 * np.log10(1 / expected), rtol=1e-5)


def test_a_tiny_random_model_is_scored_per_image_and_compared_pairwise():
  x = _images(7, seed=1)
  model = RgbVAE(variant="crvaegan", num_blocks=2, width=2, lstm_hidden=4, latent_channels=4,
                 conv_impl="xla")
  eps = np.zeros((2,) + model.latent_shape, np.float32)
  init = jax.jit(model.init)
  models = {f"seed{k}": (model, init(jax.random.key(k), x[:2], eps, eps)) for k in (0, 1)}
  a = reconstruction.reconstruction_errors(*models["seed0"], x, batch_size=3)
  b = reconstruction.reconstruction_errors(*models["seed0"], x, batch_size=7)
  assert a["mse"].shape == (7,) and np.all(np.isfinite(a["psnr"]))
  np.testing.assert_allclose(a["mse"], b["mse"], rtol=1e-5)  # padding does not leak
  summary = reconstruction.compare_models(models, x, batch_size=3)
  assert summary["num_images"] == 7
  first, second = (summary["models"][k] for k in ("seed0", "seed1"))
  np.testing.assert_allclose(first["mse_per_image"], a["mse"], rtol=1e-6)
  paired = summary["paired"]["seed1 - seed0"]
  assert paired["psnr"] == pytest.approx(second["psnr"] - first["psnr"])
  diff = np.subtract(second["psnr_per_image"], first["psnr_per_image"])
  assert paired["psnr_se"] == pytest.approx(diff.std(ddof=1) / np.sqrt(7)) and diff.std() > 0
  assert first["mse_se"] > 0 and len(first["mse_per_image"]) == 7
  same = reconstruction.compare_models({"a": models["seed0"], "b": models["seed0"]}, x,
                                       batch_size=3)
  assert same["paired"]["b - a"]["mse"] == 0 and same["paired"]["b - a"]["mse_se"] == 0
