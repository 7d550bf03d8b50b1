"""Log densities, per-block KL, the beta-ELBO and the k-sample importance-weighted bound.

Units: everything is in nats **per image** (summed over the 784 pixels and the latent
dimensions). The release's MNIST loss, BCE averaged over pixels + 0.001 * KL summed over
latents, is 784x smaller than `-elbo(beta=0.784)`: i.e. the paper trains a beta-VAE with
beta = 0.784 in these units. beta = 1 is the true ELBO, the number every table reports.
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from crvae_jax.models.channel_recurrent import split_channel_blocks

LOG_2PI = math.log(2 * math.pi)


def bernoulli_log_likelihood(logits: jax.Array, x: jax.Array) -> jax.Array:
  """log Bern(x; sigmoid(logits)) summed over all but the leading axis.

  log p = x * logits - softplus(logits), stable for any logit.
  """
  ll = x * logits - jax.nn.softplus(logits)
  return ll.reshape(ll.shape[0], -1).sum(-1)


def gaussian_log_density(z, mean, logvar):
  """Element-wise log N(z; mean, exp(logvar))."""
  return -0.5 * (LOG_2PI + logvar + jnp.square(z - mean) * jnp.exp(-logvar))


def standard_normal_log_density(z):
  """Element-wise log N(z; 0, 1)."""
  return -0.5 * (LOG_2PI + jnp.square(z))


def kl_to_standard_normal(mean, logvar):
  """Element-wise KL(N(mean, exp(logvar)) || N(0, 1)) = (var + mean^2 - 1 - logvar) / 2."""
  return 0.5 * (jnp.exp(logvar) + jnp.square(mean) - 1.0 - logvar)


def kl_per_block(kl_elementwise: jax.Array, num_blocks: int) -> jax.Array:
  """Sum an element-wise KL [B, *latent] within each channel block -> [B, T]."""
  return split_channel_blocks(kl_elementwise, num_blocks).sum(-1)


def block_weights(num_blocks: int, beta: float, beta_first_blocks=None) -> jax.Array:
  """KL weight per channel block: alpha1 for the first 3 steps, alpha2 for the rest.

  For MNIST both equal beta; the RGB models weight the first three blocks differently.
  """
  first = beta if beta_first_blocks is None else beta_first_blocks
  return jnp.array([first] * min(3, num_blocks) + [beta] * max(0, num_blocks - 3))


class Objective(NamedTuple):
  loss: jax.Array  # []  minimised: mean over images of -(beta-weighted bound)
  bound: jax.Array  # [B] the true bound (beta = 1): ELBO, or L_k for iwae_bound
  recon_ll: jax.Array  # [B]
  kl_blocks: jax.Array  # [B, T]
  kl_top: jax.Array  # [B]


def elbo(out, weights: jax.Array, beta_top: float = 1.0) -> Objective:
  """beta-ELBO: E_q[log p(x|z)] - sum_t w_t KL_t (eq. 1 of the paper with per-block
  weights). Uses the closed-form KL for one-layer models, the sampled one otherwise."""
  recon = out.recon_ll.mean(1)  # [B]
  if out.kl_blocks_analytic is not None:
    kl_blocks = out.kl_blocks_analytic
  else:
    kl_blocks = out.kl_blocks.mean(1)  # [B, T]
  kl_top = out.kl_top.mean(1)  # [B]
  weighted = recon - (kl_blocks * weights).sum(-1) - beta_top * kl_top
  true_elbo = recon - kl_blocks.sum(-1) - kl_top
  return Objective(-weighted.mean(), true_elbo, recon, kl_blocks, kl_top)


def log_weights(out, weights=None, beta_top: float = 1.0) -> jax.Array:
  """log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x), [B, K]; with weights, the KL
  part is scaled per block (weights = 1 gives the true importance weight)."""
  if weights is None:
    return out.recon_ll - out.kl_blocks.sum(-1) - out.kl_top
  return out.recon_ll - (out.kl_blocks * weights).sum(-1) - beta_top * out.kl_top


def logmeanexp(a: jax.Array, axis: int = -1) -> jax.Array:
  return jax.nn.logsumexp(a, axis=axis) - math.log(a.shape[axis])


def iwae_bound(out, weights=None, beta_top: float = 1.0) -> Objective:
  """k-sample importance-weighted bound (Burda et al. 2016, eq. 8):
  L_k = E[log (1/k) sum_k w_k]; used for crIWA. With weights = 1 it is a true bound."""
  bound = logmeanexp(log_weights(out, weights, beta_top))  # [B]
  true_bound = logmeanexp(log_weights(out))
  return Objective(-bound.mean(), true_bound, out.recon_ll.mean(1),
                   out.kl_blocks.mean(1), out.kl_top.mean(1))
