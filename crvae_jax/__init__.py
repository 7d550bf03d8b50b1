"""crvae_jax: channel-recurrent VAEs (Shang, Sohn & Tian, WACV 2018) in JAX/Flax."""

__version__ = "0.1.0"
