"""The objective's pieces against their definitions."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from crvae_jax import objectives
from crvae_jax.models.mnist import ModelOutput


def test_bernoulli_log_likelihood_matches_definition():
  logits = jax.random.normal(jax.random.key(0), (3, 28, 28, 1)) * 4
  x = (jax.random.uniform(jax.random.key(1), logits.shape) < 0.5).astype(jnp.float32)
  p = jax.nn.sigmoid(logits.astype(jnp.float64) if jax.config.x64_enabled else logits)
  expected = (x * jnp.log(p) + (1 - x) * jnp.log1p(-p)).reshape(3, -1).sum(-1)
  np.testing.assert_allclose(objectives.bernoulli_log_likelihood(logits, x), expected,
                             rtol=1e-4)
  # Stable at extreme logits (no inf/nan where log(sigmoid) would underflow).
  big = jnp.full((1, 4), 200.0)
  assert np.isfinite(objectives.bernoulli_log_likelihood(big, jnp.zeros((1, 4)))).all()


def test_analytic_kl_matches_monte_carlo():
  mean, logvar = jnp.array([0.5, -1.0]), jnp.array([-0.7, 0.4])
  z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(jax.random.key(0), (400_000, 2))
  mc = (objectives.gaussian_log_density(z, mean, logvar)
        - objectives.standard_normal_log_density(z)).mean(0)
  np.testing.assert_allclose(objectives.kl_to_standard_normal(mean, logvar), mc,
                             atol=0.01)


def test_gaussian_log_density_normalised():
  z = jnp.linspace(-12, 12, 20001)
  dens = jnp.exp(objectives.gaussian_log_density(z, 0.3, jnp.log(2.0)))
  assert abs(float(dens.sum()) * 24 / 20000 - 1.0) < 1e-4


def test_kl_per_block_sums_the_right_channels():
  kl = jnp.zeros((1, 4, 4, 8)).at[..., 2:4].set(1.0)  # channels 2, 3 = block 1 of 4
  np.testing.assert_allclose(objectives.kl_per_block(kl, 4), [[0.0, 32.0, 0.0, 0.0]])


def test_block_weights_first_three_steps():
  np.testing.assert_allclose(objectives.block_weights(5, 0.2, 0.3),
                             [0.3, 0.3, 0.3, 0.2, 0.2])
  np.testing.assert_allclose(objectives.block_weights(8, 0.784), [0.784] * 8)


def _fake_output(recon, kl_blocks):
  recon, kl_blocks = jnp.asarray(recon), jnp.asarray(kl_blocks)
  return ModelOutput(recon, kl_blocks, jnp.zeros(recon.shape), kl_blocks.mean(1),
                     jnp.zeros(recon.shape + (28, 28, 1)))


def test_elbo_beta_units():
  out = _fake_output([[-100.0]], [[[2.0, 3.0]]])
  true = objectives.elbo(out, objectives.block_weights(2, 1.0))
  assert float(true.bound[0]) == -105.0 and float(true.loss) == 105.0
  beta = objectives.elbo(out, objectives.block_weights(2, 0.784))
  np.testing.assert_allclose(beta.loss, 100 + 0.784 * 5, rtol=1e-6)
  np.testing.assert_allclose(beta.bound, [-105.0])  # reported bound is always beta = 1


def test_iwae_bound_is_logmeanexp_of_weights_and_above_elbo():
  recon = jax.random.normal(jax.random.key(0), (4, 7)) * 3 - 90
  kl = jnp.abs(jax.random.normal(jax.random.key(1), (4, 7, 2)))
  out = _fake_output(recon, kl)
  log_w = recon - kl.sum(-1)
  iw = objectives.iwae_bound(out)
  expected = jax.nn.logsumexp(log_w, axis=1) - math.log(7)
  np.testing.assert_allclose(iw.bound, expected, rtol=1e-6)
  assert np.all(iw.bound >= log_w.mean(1) - 1e-4)  # Jensen: L_k >= mean log w
