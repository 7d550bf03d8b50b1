"""The VAE-GAN / crVAE-GAN Stage1 step's parts: D batch composition, per-block KL
weights, the constant MI target. Whole steps on 1 and 2 devices, with the gate closed and
open, run through the training loop in test_rgb_training.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crvae_jax.models.channel_recurrent import Gaussian
from crvae_jax.train import stage1_step


def test_discriminator_batch_is_half_real_quarter_prior_quarter_reconstructions():
  b = 8
  real, prior, recon = (jnp.full((b, 2), v) for v in (1.0, 2.0, 3.0))
  batch, labels = stage1_step.discriminator_batch(real, prior, recon)
  source = np.asarray(batch[:, 0])
  assert [int((source == v).sum()) for v in (1, 2, 3)] == [8, 4, 4]
  np.testing.assert_array_equal(labels, (source == 1).astype(np.float32))
  with pytest.raises(ValueError, match="must be even"):
    stage1_step.discriminator_batch(real[:3], prior[:3], recon[:3])


def test_per_block_kl_weights_apply_to_the_right_latent_channels():
  t, c = 4, 8  # 2 channels per block; blocks 1-3 = channels 0-5
  mean = np.zeros((2, 4, 4, c), np.float32)
  logvar = np.zeros_like(mean)
  for channel in range(c):
    mean[:] = 0
    mean[..., channel] = 1.0  # KL = 0.5 * 1 per position, 16 positions
    weighted, per_block = stage1_step.weighted_kl(Gaussian(jnp.array(mean), jnp.array(logvar)),
                                               t, alpha1=3.0, alpha2=0.5)
    block = channel // (c // t)
    assert np.argmax(np.asarray(per_block[0])) == block
    expected_w = 3.0 if block < 3 else 0.5
    np.testing.assert_allclose(weighted, expected_w * 8.0, rtol=1e-6)


def test_mi_target_is_constant():
  pred, target = jnp.ones((2, 4, 4, 8)), jnp.zeros((2, 4, 4, 8))
  g_pred, g_target = jax.grad(stage1_step.mi_loss, argnums=(0, 1))(pred, target)
  assert float(jnp.abs(g_pred).sum()) > 0
  np.testing.assert_array_equal(g_target, 0.0)
