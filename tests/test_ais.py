"""AIS converges to log-likelihoods known in closed form, BDMC sandwiches them, and the
HMC kernel samples what it should (crvae_jax.ais).

The exact models are those of tests/test_likelihood_exact.py: z ~ N(0, I_2), and the
first P pixels x = W^T z + b + sigma * noise (log p(x) closed form) or
Bernoulli(sigmoid(W^T z + b)) (log p(x) by quadrature), written as `ais.LatentModel`s.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crvae_jax import ais, config_checks, objectives, randomness
from crvae_jax import sharding
from crvae_jax.families import mnist as mnist_family
from tests.conftest import make_tiny_config
from tests.test_likelihood_exact import (D, P, SIGMA, _images, _weights,
                                         exact_gaussian_log_px)

MESH = sharding.make_mesh(2)
FAST = ais.Settings(num_steps=100, num_chains=16, leapfrog_steps=4, step_size=0.1)


class _NoConv:  # the toy models have no convolutions: default compiler options
  conv_impl = "xla"


def toy_latent(w, b, kind="gaussian", encoder_shift=0.0):
  """LatentModel of the linear toy; its 'encoder' is the prior shifted by encoder_shift
  with standard deviation 0.5 (a deliberately poor q(z|x))."""
  w, b = jnp.asarray(w, jnp.float32), jnp.asarray(b, jnp.float32)
  normal_logpdf = lambda z: objectives.standard_normal_log_density(z).sum(-1)

  def log_likelihood(_, x, z):
    loc = z @ w + b  # [n, P]
    xs = x[:, :P]
    if kind == "gaussian":
      return objectives.gaussian_log_density(xs, loc, 2 * math.log(SIGMA)).sum(-1)
    return (xs * loc - jax.nn.softplus(loc)).sum(-1)

  def sample_data(_, key, z):
    loc = z @ w + b
    if kind == "gaussian":
      xs = loc + SIGMA * jax.random.normal(key, loc.shape)
    else:
      xs = jax.random.bernoulli(key, jax.nn.sigmoid(loc)).astype(jnp.float32)
    return jnp.pad(xs, ((0, 0), (0, 28 * 28 - P)))

  def encode(_, x):
    shape = (x.shape[0], D)
    return jnp.full(shape, encoder_shift), jnp.full(shape, math.log(0.25))

  return ais.LatentModel(
      D, lambda _, z: normal_logpdf(z), log_likelihood, lambda _, eps: eps, sample_data,
      encode, lambda _, ctx, eps: ctx[0] + jnp.exp(0.5 * ctx[1]) * eps,
      lambda _, ctx, z: objectives.gaussian_log_density(z, *ctx).sum(-1))


def _run_forward(latent, images, settings, seed=0):
  return ais.estimate_log_likelihood(_NoConv(), {}, images, MESH, settings, batch_size=4,
                                     seed=seed, progress=False, latent=latent)


def _mc_tolerance(log_w):
  """5 delta-method standard errors of logmeanexp over chains, from the log-weights."""
  w = np.exp(log_w - log_w.max(-1, keepdims=True))
  rel_var = w.var(-1, ddof=1) / np.square(w.mean(-1))
  return 5 * np.sqrt(rel_var / log_w.shape[-1])


@pytest.mark.parametrize("init", ["prior", "encoder"])
def test_ais_converges_to_the_closed_form_log_likelihood(init):
  w, b = _weights(0)
  w = 4.0 * w  # a posterior 5-10x narrower than the prior
  xs = np.random.default_rng(1).normal(size=(16, P)) * 2.0 + b
  exact = exact_gaussian_log_px(w, b, xs)
  latent = toy_latent(w, b, encoder_shift=1.0)
  res = _run_forward(latent, _images(xs), FAST._replace(num_steps=200, init=init))
  err = res.log_px - exact
  # Per image within Monte Carlo error; on average over the 16 images unbiased to a
  # few hundredths of a nat (the mean error is a lower bound's: <= 0 in expectation).
  np.testing.assert_array_less(np.abs(err), _mc_tolerance(res.log_weights) + 0.02)
  stderr = err.std(ddof=1) / math.sqrt(len(err))
  assert stderr < 0.1 and abs(err.mean()) < 3 * stderr + 0.02, (err.mean(), stderr)
  assert np.all((res.acceptance > 0.5) & (res.acceptance < 0.9)), res.acceptance
  if init == "prior":  # annealing is what does it: with one step (importance sampling
    # from the prior) the log-weights spread over tens of nats, here under one.
    one_step = _run_forward(latent, _images(xs), FAST._replace(num_steps=1))
    spread = lambda r: r.log_weights.std(-1).mean()
    assert spread(res) < 0.05 * spread(one_step), (spread(res), spread(one_step))


def test_ais_on_a_bernoulli_model_matches_quadrature():
  w, b = _weights(2)
  w = 3.0 * w
  xs = (np.random.default_rng(3).random((4, P)) < 0.5).astype(np.float64)
  grid = np.linspace(-8, 8, 401)
  z = np.stack(np.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, D)  # [G, 2]
  log_prior = -0.5 * (D * math.log(2 * math.pi) + (z ** 2).sum(-1))
  loc = z @ w + b  # [G, P]
  log_lik = xs @ loc.T - np.logaddexp(0, loc).sum(-1)  # [4, G]
  cell = math.log((grid[1] - grid[0]) ** 2)
  joint = log_prior + log_lik  # [4, G] float64
  top = joint.max(-1)
  exact = top + np.log(np.exp(joint - top[:, None]).sum(-1)) + cell
  res = _run_forward(toy_latent(w, b, "bernoulli"), _images(xs), FAST)
  np.testing.assert_array_less(np.abs(res.log_px - exact),
                               _mc_tolerance(res.log_weights) + 0.02)


def test_bdmc_bounds_enclose_the_exact_value_and_tighten_with_more_steps():
  w, b = _weights(4)
  w = 8.0 * w  # posterior ~10x narrower than the prior: few steps leave a wide gap
  latent = toy_latent(w, b)
  rng = np.random.default_rng(5)  # simulated data: z ~ p(z), x ~ p(x|z)
  latents = rng.normal(size=(8, D)).astype(np.float32)
  xs = latents @ w + b + SIGMA * rng.normal(size=(8, P))
  images = _images(xs)
  exact = exact_gaussian_log_px(w, b, xs)
  gaps = {}
  for steps in (5, 100):
    res = ais.bdmc(_NoConv(), {}, images, latents, MESH,
                   FAST._replace(num_steps=steps, num_chains=8), batch_size=4,
                   progress=False, latent=latent)
    lower, upper = res.lower.log_px, res.upper.log_px
    # Each bound holds on average over the simulated images (stochastic bounds): within
    # 3 standard errors of the mean over images (+ 0.02 nats of float32 rounding).
    for below, above in ((lower, exact), (exact, upper)):
      diff = below - above
      assert diff.mean() < 3 * diff.std(ddof=1) / math.sqrt(len(diff)) + 0.02, (
          steps, lower - exact, upper - exact)
    gaps[steps] = res.gap.mean()
  assert gaps[5] > 1.0 and gaps[100] < 0.2 * gaps[5], gaps


def _gaussian_point_fn(mean, var):
  """evaluate(z) for f_1 = N(mean, diag var), split as lq = N(0, I), a = the rest."""
  def evaluate(z):
    lq = objectives.standard_normal_log_density(z).sum(-1)
    lt = objectives.gaussian_log_density(z, mean, jnp.log(var)).sum(-1)
    return ais.Point(z, lq, lt - lq, -z, -(z - mean) / var + z)
  return evaluate


def test_hmc_kernel_leaves_a_gaussian_invariant():
  mean, var = jnp.array([1.0, -2.0, 0.5]), jnp.array([0.25, 1.0, 0.04])
  evaluate = _gaussian_point_fn(mean, var)
  n = 4000
  key = jax.random.key(0)
  z = mean + jnp.sqrt(var) * jax.random.normal(key, (n, 3))  # exact samples

  @jax.jit
  def run(z, key):
    def body(t, pt):
      k = jax.random.fold_in(key, t)
      pt, _ = ais.hmc_transition(evaluate, pt, 1.0, jnp.full((n,), 0.15), 5,
                                 jax.random.normal(jax.random.fold_in(k, 0), (n, 3)),
                                 jax.random.uniform(jax.random.fold_in(k, 1), (n,)))
      return pt
    return jax.lax.fori_loop(0, 30, body, evaluate(z)).z

  out = np.asarray(run(z, jax.random.key(1)))
  moved = np.mean(np.any(out != np.asarray(z), -1))
  assert moved > 0.5, moved
  se_mean = np.sqrt(np.asarray(var) / n)
  np.testing.assert_array_less(np.abs(out.mean(0) - np.asarray(mean)), 5 * se_mean)
  se_var = np.asarray(var) * math.sqrt(2 / n)
  np.testing.assert_array_less(np.abs(out.var(0) - np.asarray(var)), 5 * se_var)


@pytest.mark.parametrize("start", [1e-3, 0.5])
def test_step_size_adaptation_moves_acceptance_to_the_target(start):
  mean, var = jnp.zeros(3), jnp.array([0.01, 0.04, 0.02])
  evaluate = _gaussian_point_fn(mean, var)
  b, c, target = 4, 8, 0.65

  @jax.jit
  def run(key):
    z = jnp.sqrt(var) * jax.random.normal(key, (b * c, 3))
    def body(t, carry):
      pt, step, smooth, accept = carry
      k = jax.random.fold_in(key, t)
      pt, prob = ais.hmc_transition(evaluate, pt, 1.0, jnp.repeat(step, c), 3,
                                    jax.random.normal(jax.random.fold_in(k, 0), (b * c, 3)),
                                    jax.random.uniform(jax.random.fold_in(k, 1), (b * c,)))
      prob = prob.reshape(b, c).mean(-1)
      step, smooth = ais.adapt_step_size(step, smooth, prob, target)
      return pt, step, smooth, jnp.where(t >= 300, accept + prob / 100, accept)
    init = (evaluate(z), jnp.full((b,), start), jnp.full((b,), target), jnp.zeros(b))
    return jax.lax.fori_loop(0, 400, body, init)[1:]

  step, _, late_accept = (np.asarray(a) for a in run(jax.random.key(2)))
  # Started 10-100x off, the step settles where the acceptance is near the target.
  np.testing.assert_array_less(np.abs(late_accept - target), 0.12)
  assert np.all((step > 0.02) & (step < 0.3)), step


@pytest.mark.parametrize("row", ["vae", "crvae_2layer"])
def test_mnist_densities_match_the_model_and_ais_runs(row):
  # The MNIST densities (a flat latent; two stochastic layers) reproduce the model's own
  # importance weights at q's samples; AIS runs on the two-layer model from the encoder
  # (the prior path is a subset of it: log p(z) enters both).
  config = make_tiny_config(row)
  model = mnist_family.build_model(config)
  variables = mnist_family.init_variables(model, 0)
  latent = ais.mnist_latent_model(model)
  images = (np.random.default_rng(0).random((3, 28, 28)) < 0.3).astype(np.uint8)

  @jax.jit
  def both(variables, x):
    keys = randomness.example_keys(jax.random.key(0), jnp.arange(3))
    eps1, eps2 = randomness.latent_noise(keys, jnp.arange(1), model.latent_shape,
                                         model.top_dim)
    out = model.apply(variables, x[..., None], eps1, eps2)
    eps = eps1.reshape(3, -1)
    if row == "crvae_2layer":
      eps = jnp.concatenate([eps, eps2[:, 0]], -1)
    flat = x.reshape(3, -1)
    ctx = latent.encode(variables, flat)
    z = latent.sample_proposal(variables, ctx, eps)
    mine = (latent.log_prior(variables, z) + latent.log_likelihood(variables, flat, z)
            - latent.log_proposal(variables, ctx, z))
    return mine, objectives.log_weights(out)[:, 0]

  mine, theirs = both(variables, jnp.asarray(images, jnp.float32))
  np.testing.assert_allclose(mine, theirs, rtol=1e-4, atol=1e-3)
  if row == "crvae_2layer":
    settings = ais.Settings(num_steps=3, num_chains=2, leapfrog_steps=2, init="encoder")
    res = ais.estimate_log_likelihood(model, variables, images, MESH, settings,
                                      batch_size=2, progress=False)
    assert res.log_weights.shape == (3, 2) and np.all(np.isfinite(res.log_weights))
    assert np.all(res.log_px >= res.elbo - 1e-6)


@pytest.mark.parametrize("key,value", [("num_steps", 0), ("step_size", -0.1),
                                       ("num_chains", 1), ("init", "posterior"),
                                       ("target_acceptance", 1.0), ("leapfrog_steps", 0)])
def test_bad_settings_are_refused_naming_the_key(key, value):
  with pytest.raises(ValueError, match=key):
    ais.Settings()._replace(**{key: value}).check()
  config = make_tiny_config("vae")
  config.eval.estimator = "ais"
  config.eval.ais[key] = value
  with pytest.raises(config_checks.ConfigError, match=f"eval.ais.{key}"):
    config_checks.check_mnist_config(config, 2)


def test_unknown_estimator_is_refused():
  config = make_tiny_config("vae")
  config.eval.estimator = "mcmc"
  with pytest.raises(config_checks.ConfigError, match="eval.estimator"):
    config_checks.check_mnist_config(config, 2)
