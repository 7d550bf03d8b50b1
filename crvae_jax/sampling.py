"""Pictures of a model: prior samples and test-set reconstructions as PNG grids."""

import jax
import jax.numpy as jnp
import numpy as np

from crvae_jax import compiled, distributed, images
from crvae_jax.sharding import local_copy


def prior_sample_means(model, variables, num_images: int, seed: int = 0) -> np.ndarray:
  """Bernoulli means sigmoid(logits) of x ~ p(x|z), z ~ p(z): [N, 28, 28]."""
  k1, k2 = jax.random.split(jax.random.key(seed))
  eps1 = jax.random.normal(k1, (num_images,) + model.latent_shape)
  eps2 = jax.random.normal(k2, (num_images, model.top_dim))
  logits = compiled.jit(lambda v, a, b: model.apply(v, a, b, method=model.generate),
                        model=model)(variables, eps1, eps2)
  return np.asarray(jax.nn.sigmoid(logits))[..., 0]


def reconstruction_means(model, variables, images_binary: np.ndarray) -> np.ndarray:
  """Bernoulli means of p(x|z = posterior mean) for images_binary [N, 28, 28]: [N, 28, 28]."""
  def recon(v, x):
    posterior = model.apply(v, x, method=model.encode)
    return jax.nn.sigmoid(model.apply(v, posterior.mean, method=model.decode))
  x = jnp.asarray(images_binary, jnp.float32)[..., None]
  return np.asarray(compiled.jit(recon, model=model)(variables, x))[..., 0]


def write_prior_samples(model, variables, config, path: str) -> str:
  """Grid of prior sample means (process 0 only in a multi-process run)."""
  if not distributed.is_main():
    return path
  means = prior_sample_means(model, local_copy(variables), config.sample.num_images,
                             config.sample.seed)
  return images.save_grid(path, means)


def write_reconstructions(model, variables, images_binary: np.ndarray, path: str) -> str:
  """Grid of (test image, reconstruction) pairs, side by side (process 0 only)."""
  if not distributed.is_main():
    return path
  means = reconstruction_means(model, local_copy(variables), images_binary)
  pairs = images.interleave_pairs(images_binary.astype(np.float32), means)
  cols = 2 * int(np.ceil(np.sqrt(len(images_binary))))
  return images.save_grid(path, pairs, num_cols=cols)
