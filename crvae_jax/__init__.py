"""crvae_jax: channel-recurrent VAEs (Shang, Sohn & Tian, WACV 2018) in JAX/Flax.

In a notebook, `crvae_jax.restore(workdir)` returns a trained run's model
(`crvae_jax.trained.TrainedModel`: sample, reconstruct, encode, nll).
"""

__version__ = "0.1.0"


def __getattr__(name):
  # `restore` imports JAX; a lazy attribute keeps `import crvae_jax.host_memory` (which
  # the entry points run before JAX is loaded) light.
  if name == "restore":
    from crvae_jax.trained import restore  # pylint: disable=g-import-not-at-top
    return restore
  raise AttributeError(f"module 'crvae_jax' has no attribute {name!r}")
