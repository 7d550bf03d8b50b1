"""The VAE-GAN / crVAE-GAN Stage1 step: D batch composition, per-block KL weights, the
constant MI target, the gate inside the step, and 1- and 2-device runs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crvae_jax.models.channel_recurrent import Gaussian
from crvae_jax.models.rgb import Discriminator, MIHead, RgbVAE
from crvae_jax.train import gan_step, optimizer, parallel


def test_discriminator_batch_is_half_real_quarter_prior_quarter_reconstructions():
  b = 8
  real, prior, recon = (jnp.full((b, 2), v) for v in (1.0, 2.0, 3.0))
  batch, labels = gan_step.discriminator_batch(real, prior, recon)
  source = np.asarray(batch[:, 0])
  assert [int((source == v).sum()) for v in (1, 2, 3)] == [8, 4, 4]
  np.testing.assert_array_equal(labels, (source == 1).astype(np.float32))
  with pytest.raises(ValueError, match="must be even"):
    gan_step.discriminator_batch(real[:3], prior[:3], recon[:3])


def test_per_block_kl_weights_apply_to_the_right_latent_channels():
  t, c = 4, 8  # 2 channels per block; blocks 1-3 = channels 0-5
  mean = np.zeros((2, 4, 4, c), np.float32)
  logvar = np.zeros_like(mean)
  for channel in range(c):
    mean[:] = 0
    mean[..., channel] = 1.0  # KL = 0.5 * 1 per position, 16 positions
    weighted, per_block = gan_step.weighted_kl(Gaussian(jnp.array(mean), jnp.array(logvar)),
                                               t, alpha1=3.0, alpha2=0.5)
    block = channel // (c // t)
    assert np.argmax(np.asarray(per_block[0])) == block
    expected_w = 3.0 if block < 3 else 0.5
    np.testing.assert_allclose(weighted, expected_w * 8.0, rtol=1e-6)


def test_mi_target_is_constant():
  pred, target = jnp.ones((2, 4, 4, 8)), jnp.zeros((2, 4, 4, 8))
  g_pred, g_target = jax.grad(gan_step.mi_loss, argnums=(0, 1))(pred, target)
  assert float(jnp.abs(g_pred).sum()) > 0
  np.testing.assert_array_equal(g_target, 0.0)


def _build(variant="crvaegan", kappa=0.02):
  model = RgbVAE(variant=variant, num_blocks=4, width=2, lstm_hidden=8, latent_channels=8,
                 bn_axis_name=parallel.BATCH_AXIS)
  disc = Discriminator(width=2, hidden=8, num_kernels=4, kernel_dim=2,
                       axis_name=parallel.BATCH_AXIS)
  mi_head = MIHead(latent_channels=8, bn_axis_name=parallel.BATCH_AXIS)
  g_tx = optimizer.make_optimizer(learning_rate=1e-3, lstm_lr_divisor=8.0,
                                  lstm_grad_clip=5.0, halve_every_steps=0)
  d_tx = optimizer.make_discriminator_optimizer(learning_rate=1e-3, trunk_lr_factor=0.5)
  weights = gan_step.GanWeights(alpha1=3e-4, alpha2=2e-4, beta=0.0125, kappa=kappa)
  return model, disc, mi_head, g_tx, d_tx, weights


def _run(num_devices, max_d_accuracy, variant="crvaegan", kappa=0.02, steps=2):
  model, disc, mi_head, g_tx, d_tx, weights = _build(variant, kappa)
  mesh = parallel.make_mesh(num_devices)
  init_model = model.clone(bn_axis_name=None)
  state = gan_step.init_gan_state(init_model, disc.clone(axis_name=None),
                                  mi_head.clone(bn_axis_name=None), g_tx, d_tx,
                                  jax.random.key(0), use_mi=kappa > 0)
  first = jax.device_get(state)
  step = gan_step.make_gan_step(model, disc, mi_head, g_tx, d_tx, weights, mesh,
                                max_d_accuracy=max_d_accuracy)
  images = jax.random.uniform(jax.random.key(1), (steps, 8, 64, 64, 3), minval=-1, maxval=1)
  state = parallel.replicate(mesh, state)
  history = []
  for i in range(steps):
    state, metrics = step(state, parallel.shard_batch(mesh, np.asarray(images[i])),
                          jax.random.key(2))
    history.append(jax.device_get(metrics))
  return first, jax.device_get(state), history


def _changed(a, b):
  return any(jax.tree.leaves(jax.tree.map(lambda x, y: bool(np.any(x != y)), a, b)))


@pytest.mark.parametrize("num_devices", [1, 2])
def test_crvaegan_steps_run_and_the_gate_holds_the_discriminator(num_devices):
  first, state, history = _run(num_devices, max_d_accuracy=-1.0)  # gate always closed
  for m in history:
    assert all(np.all(np.isfinite(v)) for v in jax.tree.leaves(m)), m
    assert m["d_update_skipped"] == 1.0 and m["skipped"] == 0.0
  assert int(state.step) == 2
  assert _changed(first.gen["params"], state.gen["params"])
  assert _changed(first.mi["params"], state.mi["params"])  # trained with the generator
  jax.tree.map(np.testing.assert_array_equal, first.disc, state.disc)
  jax.tree.map(np.testing.assert_array_equal, first.d_opt.inner_state,
               state.d_opt.inner_state)
  assert int(state.d_opt.step) == 2


def test_open_gate_trains_the_discriminator_and_vaegan_runs():
  first, state, history = _run(1, max_d_accuracy=1.0, variant="vaegan", kappa=0.0)
  assert all(m["d_update_skipped"] == 0.0 for m in history)
  assert _changed(first.disc["params"], state.disc["params"])
  assert state.mi == {}
