"""Annealed importance sampling (AIS) and bidirectional Monte Carlo (BDMC) for log p(x).

Forward AIS (Neal 2001) anneals C chains per image from an initial distribution q0(z)
to the posterior p(z|x) along the geometric path

  f_t(z) = q0(z)^(1 - b_t) * (p(z) p(x|z))^b_t,   0 = b_0 < b_1 < ... < b_T = 1,

with one HMC transition leaving f_t invariant after each increment (T - 1 transitions
in all). The log-weight of a chain is

  log w = sum_t (b_t - b_{t-1}) [log p(z_{t-1}) + log p(x|z_{t-1}) - log q0(z_{t-1})],

E[w] = p(x), so logmeanexp over chains is a stochastic LOWER bound on log p(x). On data
simulated from the model ((z, x) ~ p(z) p(x|z), so z is an exact posterior sample),
reverse AIS starts from that z and anneals b = 1 -> 0; its weights have E[w] = 1/p(x),
so -logmeanexp is a stochastic UPPER bound: the two sandwich log p(x) and their gap
measures how far the estimator is from the truth (BDMC: Grosse, Ghahramani & Adams 2015;
Wu, Burda, Salakhutdinov & Grosse 2017, who use it on decoder-based models).

Schedule: the sigmoid schedule of Grosse et al. (b_t = rescaled sigmoid(4 (2t/T - 1))),
or linear. Increments are computed in float64 on the host and the log-weights are summed
in float32 with Kahan compensation, so rounding does not grow with the number of terms.

Initial distribution: `init='prior'` (default) or `'encoder'` (q(z|x), the trained
inference network). The prior is the default because the estimate then depends on the
generative model alone: the Table 1 rows differ precisely in their inference networks,
and an estimator that starts from each model's own encoder carries a model-dependent
bias at finite T (exactly the worry about importance sampling). It needs more
intermediate distributions for the same gap; BDMC measures whether it has enough.

HMC kernel: our own, not blackjax's. blackjax 1.7 (installable for jax 0.10) builds
per-chain kernels to be `vmap`ped; here the decoder is already batched over rows
(chains x images, BatchNorm in inference mode, and our CPU conv kernels chunk over that
batch axis, which `vmap` would hide). AIS also needs the two parts of the log-density,
log q0 and log p(x,z) - log q0, with their gradients, cached at every state: the weight
uses them and a new temperature re-weights them without another decoder pass, whereas
blackjax's HMCState caches only the combined density and gradient (one extra forward
and backward pass per chain per temperature). The kernel: identity mass, momentum
resampled every transition, L leapfrog steps, Metropolis accept/reject (a non-finite
proposal is rejected). The step size is one per image, adapted after every transition
towards a target acceptance rate (the rule of the Theano HMC tutorial that Wu et al.'s
BDMC code uses: a smoothed acceptance rate over the image's chains, step x 1.02 above
the target, x 0.98 below, clipped to [1e-4, 0.5]). Adapting on the run's own history
makes each kernel depend on the past, which strictly voids AIS's unbiasedness argument;
tests/test_ais.py checks on models with a closed-form log p(x) that its effect is below
the Monte Carlo error.

Vectorised over images and chains (a chain is one row of a [images * chains, D] latent
array), sharded over devices like `crvae_jax.likelihood`, and a `lax.fori_loop` over
the T steps carries only the current state: memory does not grow with T. Image i's
randomness uses fold_in(seed, i), so results do not depend on batch size or devices.
"""

import functools
import math
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from crvae_jax import compiled, objectives, randomness
from crvae_jax.sharding import (BATCH_AXIS, data_parallel, global_indices, map_batches,
                                replicate)

INITS = ("prior", "encoder")
SCHEDULES = ("sigmoid", "linear")
MIN_CHAINS = 2
STEP_SIZE_RANGE = (1e-4, 0.5)  # adapted step sizes are clipped to this
_STEP_UP, _STEP_DOWN, _ACCEPT_SMOOTHING = 1.02, 0.98, 0.9
_SIGMOID_SHARPNESS = 4.0


class LatentModel(NamedTuple):
  """The densities AIS needs, as pure functions of `variables` and flat latents.

  A chain's latent is one row z [D] (every stochastic layer, flattened and concatenated);
  x rows are flat images [P]. All log densities return one value per row [n]; rows must
  be independent (BatchNorm in inference mode), so the gradient of their sum is the
  per-row gradient.
  """
  dim: int  # D
  log_prior: Callable  # (variables, z [n, D]) -> log p(z) [n]
  log_likelihood: Callable  # (variables, x [n, P], z [n, D]) -> log p(x|z) [n]
  sample_prior: Callable  # (variables, eps [n, D] standard normal) -> z ~ p(z) [n, D]
  sample_data: Callable  # (variables, key, z [n, D]) -> x ~ p(x|z) [n, P]
  # The encoder (init='encoder'): per-image context from x [b, P], a pytree of [b, ...]
  # arrays, repeated per chain; then sampling and the log density of q0(z|x).
  encode: Optional[Callable] = None  # (variables, x [b, P]) -> context
  sample_proposal: Optional[Callable] = None  # (variables, context, eps [n, D]) -> z
  log_proposal: Optional[Callable] = None  # (variables, context, z [n, D]) -> [n]


@functools.lru_cache(maxsize=16)
def mnist_latent_model(model) -> LatentModel:
  """`LatentModel` of an `MnistVAE` (any variant): Bernoulli pixels, BN in inference
  mode; for crvae_2layer z = [z1, z2], p(z) = p(z2) p(z1|z2), q0 = q(z1|x) q(z2|z1)."""
  latent_shape = tuple(model.latent_shape)
  d1 = math.prod(latent_shape)
  two = model.variant == "crvae_2layer"
  dim = d1 + (model.top_dim if two else 0)
  split = lambda z: (z[:, :d1], z[:, d1:])  # [n, d1], [n, top_dim or 0]
  def top(name):  # a Gaussian of the second stochastic layer: (variables, z) -> Gaussian
    return lambda v, z: model.apply(v, z, method=lambda m, z: getattr(m.top, name)(z))
  prior_of_z1, posterior_of_z2 = top("prior_of_z1"), top("posterior")
  images = lambda x: x.reshape(x.shape[0], 28, 28, 1)
  normal = lambda z, g: objectives.gaussian_log_density(z, *g).sum(-1)

  def log_prior(variables, z):
    z1, z2 = split(z)
    if not two:
      return objectives.standard_normal_log_density(z1).sum(-1)
    return (objectives.standard_normal_log_density(z2).sum(-1)
            + normal(z1, prior_of_z1(variables, z2)))

  def logits(variables, z):
    z1 = split(z)[0].reshape((z.shape[0],) + latent_shape)  # [n, *latent]
    return model.apply(variables, z1, method=model.decode)  # [n, 28, 28, 1]

  def log_likelihood(variables, x, z):
    return objectives.bernoulli_log_likelihood(logits(variables, z), images(x))

  def sample_prior(variables, eps):
    if not two:
      return eps
    e1, z2 = split(eps)
    mean, logvar = prior_of_z1(variables, z2)
    return jnp.concatenate([mean + jnp.exp(0.5 * logvar) * e1, z2], -1)

  def sample_data(variables, key, z):
    x = jax.random.bernoulli(key, jax.nn.sigmoid(logits(variables, z)))
    return x.reshape(z.shape[0], -1).astype(jnp.float32)  # [n, 784]

  def encode(variables, x):
    mean, logvar = model.apply(variables, images(x), method=model.encode)
    return mean.reshape(x.shape[0], d1), logvar.reshape(x.shape[0], d1)

  def sample_proposal(variables, context, eps):
    mean, logvar = context
    e1, e2 = split(eps)
    z1 = mean + jnp.exp(0.5 * logvar) * e1
    if not two:
      return z1
    m2, lv2 = posterior_of_z2(variables, z1)
    return jnp.concatenate([z1, m2 + jnp.exp(0.5 * lv2) * e2], -1)

  def log_proposal(variables, context, z):
    z1, z2 = split(z)
    log_q = normal(z1, context)
    return log_q + normal(z2, posterior_of_z2(variables, z1)) if two else log_q

  return LatentModel(dim, log_prior, log_likelihood, sample_prior, sample_data, encode,
                     sample_proposal, log_proposal)


# ----------------------------------------------------------------------------- settings


def invalid_setting(*, num_steps, num_chains, leapfrog_steps, step_size,
                    target_acceptance, init, schedule="sigmoid"):
  """The first impossible AIS setting as (name, value, what is allowed), or None."""
  checks = (
      ("num_steps", num_steps, num_steps >= 1,
       "the number of annealing steps T must be >= 1 (T - 1 HMC transitions)"),
      ("num_chains", num_chains, num_chains >= MIN_CHAINS,
       f"at least {MIN_CHAINS} chains per image: the per-image step size is adapted on "
       "the chains' acceptance and their spread is the estimate's Monte Carlo error"),
      ("leapfrog_steps", leapfrog_steps, leapfrog_steps >= 1, "must be >= 1"),
      ("step_size", step_size, STEP_SIZE_RANGE[0] <= step_size <= STEP_SIZE_RANGE[1],
       f"the initial HMC step size must lie in {list(STEP_SIZE_RANGE)}"),
      ("target_acceptance", target_acceptance, 0 < target_acceptance < 1,
       "an acceptance rate strictly between 0 and 1 (0.65 is usual)"),
      ("init", init, init in INITS, f"one of {INITS}"),
      ("schedule", schedule, schedule in SCHEDULES, f"one of {SCHEDULES}"),
  )
  for name, value, ok, allowed in checks:
    if not ok:
      return name, value, allowed
  return None


class Settings(NamedTuple):
  """AIS settings (config: eval.ais; defaults = the paper-scale config's)."""
  num_steps: int = 1000  # T
  num_chains: int = 16  # C per image
  leapfrog_steps: int = 10  # L
  step_size: float = 0.05  # initial, adapted per image
  target_acceptance: float = 0.65
  init: str = "prior"
  schedule: str = "sigmoid"

  def check(self):
    bad = invalid_setting(**self._asdict())
    if bad:
      raise ValueError(f"AIS setting {bad[0]}={bad[1]!r} is invalid: {bad[2]}")
    return self

  @property
  def tag(self) -> str:
    """File-name tag, e.g. 'AIS1000x16-prior' (T x C, initial distribution)."""
    return f"AIS{self.num_steps}x{self.num_chains}-{self.init}"


def settings_from_config(ais_config) -> Settings:
  """`Settings` from a config's `eval.ais` (a ConfigDict or dict with the same keys)."""
  return Settings(**{k: ais_config[k] for k in Settings._fields}).check()


def schedule(num_steps: int, kind: str = "sigmoid") -> np.ndarray:
  """b_0 = 0 < ... < b_T = 1, float64 [T + 1] (sigmoid: Grosse et al. 2015, sharpness 4)."""
  t = np.linspace(0.0, 1.0, num_steps + 1)
  if kind == "linear":
    return t
  if kind != "sigmoid":
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {kind!r}")
  s = 1.0 / (1.0 + np.exp(-_SIGMOID_SHARPNESS * (2.0 * t - 1.0)))
  return (s - s[0]) / (s[-1] - s[0])


# --------------------------------------------------------------------------- HMC kernel


class Point(NamedTuple):
  """A chain state with its cached log densities: log f_b(z) = lq + b * a."""
  z: jax.Array  # [n, D]
  lq: jax.Array  # [n] log q0(z)
  a: jax.Array  # [n] log p(z) + log p(x|z) - log q0(z)
  g_lq: jax.Array  # [n, D] gradient of lq
  g_a: jax.Array  # [n, D] gradient of a


def hmc_transition(evaluate: Callable, point: Point, beta, step_size, leapfrog_steps: int,
                   momentum, uniform, always_accept=False):
  """One HMC transition leaving f_beta(z) = exp(lq + beta * a) invariant, per row.

  Args:
    evaluate: z [n, D] -> Point. point: the current states.
    beta: [] inverse temperature. step_size: [n] per-row leapfrog step.
    leapfrog_steps: L. momentum: [n, D] standard normals; uniform: [n] in [0, 1).
    always_accept: [] bool; True takes the proposal whatever its energy (with step size
      0 this evaluates `point.z` afresh: how the annealing loop fills in its first state).
  Returns:
    (new Point, acceptance probability [n]).
  """
  eps = step_size[:, None]  # [n, 1]
  grad = lambda pt: pt.g_lq + beta * pt.g_a
  p = momentum + 0.5 * eps * grad(point)

  def leap(_, carry):
    pt, p = carry
    pt = evaluate(pt.z + eps * p)
    return pt, p + eps * grad(pt)

  proposal, p = jax.lax.fori_loop(0, leapfrog_steps, leap, (point, p))
  p = p - 0.5 * eps * grad(proposal)  # the last momentum step is a half step
  energy = lambda pt, p: -(pt.lq + beta * pt.a) + 0.5 * jnp.square(p).sum(-1)
  log_accept = energy(point, momentum) - energy(proposal, p)
  prob = jnp.where(jnp.isnan(log_accept), 0.0, jnp.exp(jnp.minimum(log_accept, 0.0)))
  accept = (uniform < prob) | always_accept
  choose = lambda new, old: jnp.where(accept.reshape((-1,) + (1,) * (new.ndim - 1)),
                                      new, old)
  return jax.tree.map(choose, proposal, point), prob


def adapt_step_size(step_size, smoothed_accept, accept, target: float):
  """Step-size rule after one transition (per image): smooth the acceptance, then scale
  the step up (x1.02) above the target and down (x0.98) below; clip to STEP_SIZE_RANGE.
  All [b]; returns (step_size, smoothed_accept)."""
  smoothed = _ACCEPT_SMOOTHING * smoothed_accept + (1 - _ACCEPT_SMOOTHING) * accept
  step = step_size * jnp.where(smoothed > target, _STEP_UP, _STEP_DOWN)
  return jnp.clip(step, *STEP_SIZE_RANGE), smoothed


def _point_fn(latent: LatentModel, variables, x_rep, context, init: str):
  """z [n, D] -> Point for chains whose images are x_rep [n, P]."""
  def value_and_grad(f):
    return jax.value_and_grad(lambda z: (lambda v: (v.sum(), v))(f(z)), has_aux=True)

  def evaluate(z):
    (_, ll), g_ll = value_and_grad(lambda z: latent.log_likelihood(variables, x_rep, z))(z)
    (_, lp), g_lp = value_and_grad(lambda z: latent.log_prior(variables, z))(z)
    if init == "prior":
      return Point(z, lp, ll, g_lp, g_ll)
    (_, lq), g_lq = value_and_grad(
        lambda z: latent.log_proposal(variables, context, z))(z)
    return Point(z, lq, lp + ll - lq, g_lq, g_lp + g_ll - g_lq)
  return evaluate


# ------------------------------------------------------------------------- annealing


def _anneal_per_device(variables, data, offset, seed_key, betas, deltas, *,
                       latent: LatentModel, settings: Settings, reverse: bool):
  """data [b, P] images (forward) or [b, P + D] images and exact latents (reverse)
  -> [b, C + 2]: per-chain log-weights, mean acceptance rate, final step size."""
  s = settings
  b, c, d = data.shape[0], s.num_chains, latent.dim
  n = b * c
  x = data[:, :data.shape[1] - d] if reverse else data  # [b, P]
  x_rep = jnp.repeat(x, c, axis=0)  # [n, P], chain j of image i is row i * C + j
  keys = randomness.example_keys(seed_key, offset + global_indices(b))  # [b]
  normals = lambda k, shape: jax.vmap(lambda k: jax.random.normal(k, (c,) + shape))(
      k).reshape((n,) + shape)
  context = None
  if s.init == "encoder":
    context = jax.tree.map(lambda a: jnp.repeat(a, c, axis=0), latent.encode(variables, x))
  evaluate = _point_fn(latent, variables, x_rep, context, s.init)
  if reverse:  # every chain starts at the image's exact latent
    z0 = jnp.repeat(data[:, -d:], c, axis=0)  # [n, D]
  else:
    eps = normals(jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys), (d,))
    z0 = (latent.sample_prior(variables, eps) if s.init == "prior"
          else latent.sample_proposal(variables, context, eps))
  zeros = jnp.zeros_like(x[:, 0])  # [b], carries the batch sharding (shard_map vma)
  step_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)

  def weigh(log_w, comp, point, delta):  # Kahan-compensated log_w += delta * a
    term = delta * point.a - comp
    total = log_w + term
    return total, (total - log_w) - term

  # Step t moves z_{t-1} -> z_t with a transition leaving f_t invariant, then adds
  # (b_{t+1} - b_t) a(z_t). Step 0 has no transition: a step of size 0, always accepted,
  # which evaluates z_0 with the loop's own decoder pass (a second copy of the decoder
  # and its gradient outside the loop would double the compile time).
  def body(t, carry):
    point, log_w, comp, step, smoothed, accept_sum = carry
    k = jax.vmap(lambda k: jax.random.fold_in(k, t))(step_keys)
    momentum = normals(jax.vmap(lambda k: jax.random.fold_in(k, 0))(k), (d,))
    uniform = jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, 1), (c,)))(
        k).reshape(n)
    first = t == 0
    point, prob = hmc_transition(evaluate, point, betas[t], jnp.repeat(
        jnp.where(first, 0.0, step), c), s.leapfrog_steps, momentum, uniform, first)
    prob = prob.reshape(b, c).mean(-1)  # [b]
    new_step, new_smoothed = adapt_step_size(step, smoothed, prob, s.target_acceptance)
    step, smoothed = (jnp.where(first, old, new) for old, new in
                      ((step, new_step), (smoothed, new_smoothed)))
    log_w, comp = weigh(log_w, comp, point, deltas[t])
    return point, log_w, comp, step, smoothed, accept_sum + jnp.where(first, 0.0, prob)

  zeros_n = jnp.repeat(zeros, c)
  blank = Point(z0, zeros_n, zeros_n, jnp.zeros_like(z0), jnp.zeros_like(z0))
  init = (blank, zeros_n, zeros_n, zeros + s.step_size, zeros + s.target_acceptance, zeros)
  _, log_w, _, step, _, accept_sum = jax.lax.fori_loop(0, s.num_steps, body, init)
  accept = accept_sum / max(s.num_steps - 1, 1)
  return jnp.concatenate([log_w.reshape(b, c), accept[:, None], step[:, None]], -1)


@functools.lru_cache(maxsize=16)
def make_annealer(latent: LatentModel, mesh, settings: Settings, *, reverse: bool = False,
                  model=None):
  """Jitted `f(variables, data, offset, seed_key, betas [T+1], deltas [T]) -> [B, C+2]`
  (compiled for `model`'s conv kernels, `crvae_jax.compiled`); cached, so the same
  settings on the same model compile once per process."""
  per_device = functools.partial(_anneal_per_device, latent=latent, settings=settings,
                                 reverse=reverse)
  return data_parallel(per_device, mesh, (P(), P(BATCH_AXIS), P(), P(), P(), P()),
                       P(BATCH_AXIS), model=model)


class AISResult(NamedTuple):
  """Per-image AIS estimates in nats, [N] unless noted. The first fields match
  `likelihood.LikelihoodResult`, with chains in the place of importance samples."""
  elbo: np.ndarray  # mean over chains of log w (a weaker bound, the AIS 'ELBO')
  log_px_k1: np.ndarray  # log w of chain 0 alone
  log_px_report: np.ndarray  # logmeanexp over the first `report_k` chains
  log_px: np.ndarray  # logmeanexp over all chains: the estimate (bound) of log p(x)
  num_samples: int  # chains C
  report_k: int
  log_weights: np.ndarray  # [N, C]
  acceptance: np.ndarray  # mean HMC acceptance probability over chains and transitions
  step_size: np.ndarray  # the adapted step size at the end
  settings: Settings
  reverse: bool  # True: reverse AIS; log_px is then an UPPER bound (-logmeanexp 1/w)


def _logmeanexp(a: np.ndarray) -> np.ndarray:
  a = np.asarray(a, np.float64)
  m = a.max(-1, keepdims=True)
  return (m + np.log(np.exp(a - m).mean(-1, keepdims=True)))[..., 0]


def _run(latent, variables, data, mesh, settings, *, reverse, batch_size, report_k,
         seed, progress, model):
  settings = settings.check()
  if batch_size < 1 or report_k < 1:
    raise ValueError(f"batch_size and report_k must be >= 1, got {batch_size}, {report_k}")
  annealer = make_annealer(latent, mesh, settings, reverse=reverse, model=model)
  betas64 = schedule(settings.num_steps, settings.schedule)
  if reverse:
    betas64 = betas64[::-1]
  betas, deltas = (jnp.asarray(a, jnp.float32) for a in (betas64, np.diff(betas64)))
  variables = replicate(mesh, variables)
  key = jax.random.fold_in(jax.random.key(seed), int(reverse))
  desc = f"{'reverse ' if reverse else ''}{settings.tag}"
  with tqdm(total=len(data), unit="img", desc=desc, disable=not progress) as bar:
    out = map_batches(lambda batch, off: annealer(variables, batch, off, key, betas,
                                                  deltas), data, mesh, batch_size,
                      progress=bar)  # [N, C + 2]
  c = settings.num_chains
  log_w = out[:, :c].astype(np.float64)
  if reverse:  # E[w] = 1 / p(x): report log p(x) estimates, upper bounds
    log_w = -log_w
    log_px = -_logmeanexp(-log_w)
    report = -_logmeanexp(-log_w[:, :report_k])
  else:
    log_px, report = _logmeanexp(log_w), _logmeanexp(log_w[:, :report_k])
  return AISResult(log_w.mean(-1), log_w[:, 0], report, log_px, c, min(report_k, c),
                   log_w, out[:, c], out[:, c + 1], settings, reverse)


def _flat(images: np.ndarray) -> np.ndarray:
  return np.asarray(images, np.float32).reshape(len(images), -1)


def estimate_log_likelihood(model, variables, images_binary: np.ndarray, mesh,
                            settings: Settings = Settings(), *, batch_size: int = 16,
                            report_k: int = 100, seed: int = 0, progress: bool = True,
                            latent: Optional[LatentModel] = None) -> AISResult:
  """Forward AIS: a stochastic lower bound on log p(x) of every image [N, 28, 28] {0, 1}.

  Args:
    model: an `MnistVAE` (or anything with `conv_impl`, when `latent` is given).
    variables: {'params', 'batch_stats'} (BN in inference mode).
    settings: T, C, L, initial step size, target acceptance, init, schedule.
    batch_size: images per call (each runs C chains: memory ~ batch * C decoder passes
      with their gradients), rounded up to a multiple of the device count.
    report_k: also report logmeanexp over the first report_k chains.
    latent: the densities; default `mnist_latent_model(model)`.
  """
  latent = latent or mnist_latent_model(model)
  return _run(latent, variables, _flat(images_binary), mesh, settings, reverse=False,
              batch_size=batch_size, report_k=report_k, seed=seed, progress=progress,
              model=model)


def reverse_log_likelihood(model, variables, images_binary: np.ndarray, latents, mesh,
                           settings: Settings = Settings(), *, batch_size: int = 16,
                           report_k: int = 100, seed: int = 0, progress: bool = True,
                           latent: Optional[LatentModel] = None) -> AISResult:
  """Reverse AIS from exact posterior samples latents [N, D] of images [N, 28, 28]
  (data simulated from the model, `simulate`): a stochastic UPPER bound on log p(x)."""
  latent = latent or mnist_latent_model(model)
  latents = np.asarray(latents, np.float32)
  if latents.shape != (len(images_binary), latent.dim):
    raise ValueError(f"latents must be [N={len(images_binary)}, D={latent.dim}], got "
                     f"{latents.shape}")
  data = np.concatenate([_flat(images_binary), latents], axis=1)  # [N, P + D]
  return _run(latent, variables, data, mesh, settings, reverse=True,
              batch_size=batch_size, report_k=report_k, seed=seed, progress=progress,
              model=model)


def simulate(model, variables, num_images: int, *, seed: int = 0,
             latent: Optional[LatentModel] = None):
  """(images [N, 28, 28] uint8 in {0, 1}, latents [N, D] float32) drawn from the model:
  z ~ p(z), x ~ p(x|z) (Bernoulli pixels, binarized), BN in inference mode."""
  latent = latent or mnist_latent_model(model)
  key = jax.random.fold_in(jax.random.key(seed), 2)

  def draw(variables, key):
    eps = jax.random.normal(jax.random.fold_in(key, 0), (num_images, latent.dim))
    z = latent.sample_prior(variables, eps)
    return latent.sample_data(variables, jax.random.fold_in(key, 1), z), z

  x, z = compiled.jit(draw, model=model)(variables, key)
  x = np.asarray(x)
  shape = (28, 28) if x.shape[1] == 28 * 28 else x.shape[1:]
  return x.reshape((num_images,) + shape).astype(np.uint8), np.asarray(z, np.float32)


class BDMCResult(NamedTuple):
  """Both bounds on simulated data (nats per image, [N])."""
  lower: AISResult  # forward AIS, log p(x) >= lower.log_px in expectation
  upper: AISResult  # reverse AIS from the exact latent
  gap: np.ndarray  # upper.log_px - lower.log_px, [N]


def bdmc(model, variables, images_binary: np.ndarray, latents, mesh,
         settings: Settings = Settings(), **kwargs) -> BDMCResult:
  """Forward and reverse AIS on simulated (images, exact latents): the sandwich."""
  lower = estimate_log_likelihood(model, variables, images_binary, mesh, settings, **kwargs)
  upper = reverse_log_likelihood(model, variables, images_binary, latents, mesh, settings,
                                 **kwargs)
  return BDMCResult(lower, upper, upper.log_px - lower.log_px)


# ------------------------------------------------------- --mode=evaluate (eval.estimator)


def estimate_from_config(model, variables, images_binary: np.ndarray, mesh, eval_config,
                         *, progress: bool = True) -> AISResult:
  """Forward AIS with a config's `eval` section: eval.ais (T, C, L, ...) and the
  estimator-independent eval.batch_size, eval.report_k (chains) and eval.seed."""
  return estimate_log_likelihood(model, variables, images_binary, mesh,
                                 settings_from_config(eval_config.ais),
                                 batch_size=eval_config.batch_size,
                                 report_k=eval_config.report_k, seed=eval_config.seed,
                                 progress=progress)


def summary_fields(result: AISResult) -> dict:
  """What an evaluation summary records about an AIS run: settings and diagnostics."""
  return {"estimator": "ais", "ais": dict(result.settings._asdict()),
          "ais_acceptance_mean": float(np.mean(result.acceptance)),
          "ais_step_size_final": [float(np.min(result.step_size)),
                                  float(np.median(result.step_size)),
                                  float(np.max(result.step_size))],  # min, median, max
          "ais_log_weight_spread": float(np.mean(np.std(result.log_weights, -1)))}
