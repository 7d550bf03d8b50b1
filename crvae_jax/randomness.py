"""Randomness derived from *what* it is for, never from process state or device layout.

Every random draw is keyed by (run rng, step, global example index[, sample index]), so a
resumed run, a run on a different number of devices, and an evaluation with a different
chunk or batch size all see exactly the same numbers.
"""

import jax
import jax.numpy as jnp


def example_keys(rng: jax.Array, indices: jax.Array) -> jax.Array:
  """One key per global example index: fold_in(rng, index). indices [B] -> keys [B]."""
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(rng, indices)


def normals(keys: jax.Array, sample_ids: jax.Array, shape) -> jax.Array:
  """Standard normals [B, n, *shape]: draw (i, k) uses fold_in(keys[i], sample_ids[k])."""
  def one(key, k):
    return jax.random.normal(jax.random.fold_in(key, k), shape)
  per_key = lambda key: jax.vmap(one, in_axes=(None, 0))(key, sample_ids)
  return jax.vmap(per_key)(keys)


def latent_noise(keys: jax.Array, sample_ids: jax.Array, latent_shape, top_dim: int):
  """eps1 [B, n, *latent_shape] and eps2 [B, n, top_dim] from independent sub-keys."""
  k1 = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
  k2 = jax.vmap(lambda k: jax.random.fold_in(k, 2))(keys)
  return normals(k1, sample_ids, tuple(latent_shape)), normals(k2, sample_ids, (top_dim,))


def dynamic_binarize(keys: jax.Array, images_uint8: jax.Array) -> jax.Array:
  """A fresh Bernoulli draw per example, p = intensity / 255: [B, 28, 28] -> float
  [B, 28, 28, 1] in {0, 1}. Uses fold_in(key, 0), independent of the latent noise."""
  def one(key, image):
    p = image.astype(jnp.float32) / 255.0
    return jax.random.bernoulli(jax.random.fold_in(key, 0), p).astype(jnp.float32)
  return jax.vmap(one)(keys, images_uint8)[..., None]
