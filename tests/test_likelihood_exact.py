"""The importance-sampled estimator converges to log-likelihoods known in closed form.

Two toy models with the MnistVAE interface (`encode`, `sample_terms`, `latent_shape`,
`top_dim`), whose decoders use only the first P pixels of each image:
- linear-Gaussian: z ~ N(0, I_D), x = W^T z + b + sigma * noise, so x ~ N(b, W^T W +
  sigma^2 I) exactly; with W's rows orthogonal the true posterior is a diagonal Gaussian.
- Bernoulli: logits = W^T z + b with a 2-D latent; log p(x) by quadrature on a fine grid.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crvae_jax import likelihood, objectives
from crvae_jax.models.channel_recurrent import Gaussian
from crvae_jax.models.mnist import ModelOutput
from crvae_jax import sharding

P, D, SIGMA = 16, 2, 0.7


class ToyLinear(nn.Module):
  w: tuple  # [D][P] nested tuples (hashable module field)
  b: tuple  # [P]
  kind: str = "gaussian"  # or 'bernoulli'
  proposal: str = "prior"  # or 'posterior' (exact; Gaussian only)
  num_blocks: int = 1
  top_dim: int = 1

  @property
  def latent_shape(self):
    return (D,)

  def _wb(self):
    return jnp.asarray(self.w, jnp.float32), jnp.asarray(self.b, jnp.float32)

  def encode(self, x, train=False):
    del train
    w, b = self._wb()
    xs = x.reshape(x.shape[0], -1)[:, :P]  # [B, P]
    if self.proposal == "prior":
      zeros = jnp.zeros((x.shape[0], D))
      return Gaussian(zeros, zeros)
    precision = 1.0 + jnp.sum(w * w, axis=1) / SIGMA ** 2  # [D], rows orthogonal
    mean = ((xs - b) @ w.T) / SIGMA ** 2 / precision
    return Gaussian(mean, jnp.broadcast_to(-jnp.log(precision), mean.shape))

  def sample_terms(self, x, posterior, eps1, eps2=None, train=False):
    del eps2, train
    w, b = self._wb()
    mean, logvar = (a[:, None] for a in posterior)
    z = mean + jnp.exp(0.5 * logvar) * eps1  # [B, n, D]
    xs = x.reshape(x.shape[0], 1, -1)[..., :P]  # [B, 1, P]
    loc = z @ w + b  # [B, n, P]
    if self.kind == "gaussian":
      recon = objectives.gaussian_log_density(xs, loc, 2 * math.log(SIGMA)).sum(-1)
    else:
      recon = (xs * loc - jax.nn.softplus(loc)).sum(-1)
    kl = (objectives.gaussian_log_density(z, mean, logvar)
          - objectives.standard_normal_log_density(z)).sum(-1)
    return ModelOutput(recon, kl[..., None], jnp.zeros_like(recon), None, loc)


def _weights(seed):
  rng = np.random.default_rng(seed)
  q, _ = np.linalg.qr(rng.normal(size=(P, D)))  # orthonormal columns
  w = (q.T * np.array([1.2, 0.6])[:, None])  # [D, P], orthogonal rows
  return w, rng.normal(size=P) * 0.3


def _images(values):
  x = np.zeros((len(values), 28 * 28), np.float32)
  x[:, :P] = values
  return x.reshape(-1, 28, 28)


def _estimate(model, images, k, seed=0):
  return likelihood.estimate_log_likelihood(
      model, {}, images, sharding.make_mesh(2), num_samples=k, chunk_size=2048,
      batch_size=4, report_k=100, seed=seed, progress=False)


def exact_gaussian_log_px(w, b, xs):
  cov = w.T @ w + SIGMA ** 2 * np.eye(P)
  _, logdet = np.linalg.slogdet(cov)
  diff = xs - b
  quad = np.einsum("bi,ij,bj->b", diff, np.linalg.inv(cov), diff)
  return -0.5 * (P * math.log(2 * math.pi) + logdet + quad)


def test_linear_gaussian_exact_posterior_gives_exact_log_likelihood_at_any_k():
  # With q = the true posterior every importance weight equals p(x): K does not matter.
  w, b = _weights(0)
  xs = np.random.default_rng(1).normal(size=(4, P)) + b
  model = ToyLinear(tuple(map(tuple, w)), tuple(b), "gaussian", "posterior")
  exact = exact_gaussian_log_px(w, b, xs)
  res = _estimate(model, _images(xs), k=5)
  # float32 arithmetic on ~25-nat terms: 1e-4 relative.
  np.testing.assert_allclose(res.log_px, exact, rtol=1e-4)
  np.testing.assert_allclose(res.log_px_k1, exact, rtol=1e-4)
  np.testing.assert_allclose(res.elbo, exact, rtol=1e-4)


def _is_tolerance(log_lik_grid, log_prior_grid, k):
  """5 standard errors of log(mean w) for prior-proposal weights w = p(x|z) (delta
  method: sd(log p_hat) ~ sqrt(E[w^2]/E[w]^2 - 1) / sqrt(K)), from the quadrature."""
  log_m1 = jax.nn.logsumexp(log_prior_grid + log_lik_grid)
  log_m2 = jax.nn.logsumexp(log_prior_grid + 2 * log_lik_grid)
  # The grid's cell area and normaliser cancel in E[w^2] / E[w]^2 up to a constant:
  log_norm = jax.nn.logsumexp(log_prior_grid)
  rel_var = float(jnp.exp(log_m2 + log_norm - 2 * log_m1)) - 1.0
  return 5 * math.sqrt(max(rel_var, 0.0) / k)


@pytest.mark.parametrize("kind", ["gaussian", "bernoulli"])
def test_prior_proposal_converges_to_the_exact_value(kind):
  w, b = _weights(2)
  rng = np.random.default_rng(3)
  if kind == "gaussian":
    xs = rng.normal(size=(4, P)) * 1.0 + b
  else:
    xs = (rng.random((4, P)) < 0.5).astype(np.float64)
  # Quadrature over z in [-8, 8]^2 (float64): log p(x) = log sum N(z) p(x|z) dz^2.
  grid = np.linspace(-8, 8, 801)
  z = np.stack(np.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, D)  # [G, 2]
  log_prior = -0.5 * (D * math.log(2 * math.pi) + (z ** 2).sum(-1))
  loc = z @ w + b  # [G, P]
  k = 20_000
  model = ToyLinear(tuple(map(tuple, w)), tuple(b), kind, "prior")
  res = _estimate(model, _images(xs), k=k)
  cell = math.log((grid[1] - grid[0]) ** 2)
  for i, x in enumerate(xs):
    if kind == "gaussian":
      log_lik = (-0.5 * (math.log(2 * math.pi * SIGMA ** 2)
                         + (x - loc) ** 2 / SIGMA ** 2)).sum(-1)
    else:
      log_lik = (x * loc - np.logaddexp(0, loc)).sum(-1)
    exact = float(jax.nn.logsumexp(jnp.asarray(log_prior + log_lik))) + cell
    if kind == "gaussian":  # the quadrature itself is checked against the closed form
      np.testing.assert_allclose(exact, exact_gaussian_log_px(w, b, x[None])[0], atol=1e-6)
    tol = _is_tolerance(jnp.asarray(log_lik), jnp.asarray(log_prior), k) + 1e-3
    assert abs(res.log_px[i] - exact) < tol, (i, res.log_px[i], exact, tol)
    # The K-sample bound is below the truth on average and above the ELBO.
    assert res.elbo[i] <= res.log_px[i] + 1e-5


def test_k_sample_bound_rises_with_k_on_average():
  # E[log p_hat_K] is non-decreasing in K (Burda et al. 2016, thm. 1) and tends to
  # log p(x). 256 copies of one image get independent sample streams (keys follow the
  # image index), so averages over them estimate the expectation; K=1, K=10 and K=1000
  # come from the same stream. With the prior as proposal and a sharp likelihood
  # (weights x8) the gaps are 8.2 and 0.49 nats, 15 and 6 paired standard errors wide
  # with this seed, so the ordering checked below is not luck.
  w, b = _weights(4)
  w = 8.0 * w
  x = (np.random.default_rng(5).random((1, P)) < 0.5).astype(np.float64)
  model = ToyLinear(tuple(map(tuple, w)), tuple(b), "bernoulli", "prior")
  res = likelihood.estimate_log_likelihood(
      model, {}, _images(np.repeat(x, 256, 0)), sharding.make_mesh(2), num_samples=1000,
      chunk_size=500, batch_size=64, report_k=10, seed=0, progress=False)
  levels = [res.log_px_k1, res.log_px_report, res.log_px]  # K = 1, 10, 1000
  for low, high in zip(levels, levels[1:]):
    gap = high - low
    stderr = gap.std(ddof=1) / math.sqrt(len(gap))
    assert gap.mean() > 3 * stderr, (gap.mean(), stderr)
  # The K=1 term and the mean log-weight both estimate the ELBO.
  assert abs(res.log_px_k1.mean() - res.elbo.mean()) < 4 * res.log_px_k1.std() / 16
