"""The MNIST crVAE's data-parallel training step and validation ELBO.

The step is written once per device and mapped over the mesh (`sharding.data_parallel`):
each device binarizes its shard of the global batch, runs the model, and the gradients
(and BatchNorm batch statistics, through BatchNorm's `axis_name`) are averaged with
`lax.pmean`. Parameters and optimizer state are replicated. Every random draw is keyed
by (rng, step, global example index) (see `crvae_jax.randomness`), so 1 device and N
devices compute the same update.
"""

import functools
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, PartitionSpec as P

from crvae_jax import objectives, randomness
from crvae_jax.sharding import (BATCH_AXIS, data_parallel, global_indices, map_batches,
                                replicate)
from crvae_jax.train.guards import all_finite, keep_if


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # [] int32
  params: Any
  batch_stats: Any
  opt_state: Any


def make_objective(objective_config, num_blocks: int) -> Callable:
  """ModelOutput -> objectives.Objective for config.objective (kind 'elbo' or 'iwae')."""
  weights = objectives.block_weights(num_blocks, objective_config.beta,
                                     objective_config.get("beta_first_blocks"))
  if objective_config.kind == "elbo":
    return lambda out: objectives.elbo(out, weights, objective_config.beta)
  if objective_config.kind == "iwae":
    return lambda out: objectives.iwae_bound(out, weights, objective_config.beta)
  raise ValueError(f"objective.kind must be 'elbo' or 'iwae', got {objective_config.kind!r}")


def _train_step_per_device(state: TrainState, images, rng, *, model, tx, objective_fn,
                           num_samples: int):
  """One update on this device's shard images [b, 28, 28] uint8 (b = B / devices)."""
  keys = randomness.example_keys(jax.random.fold_in(rng, state.step),
                                 global_indices(images.shape[0]))
  x = randomness.dynamic_binarize(keys, images)  # [b, 28, 28, 1]
  eps1, eps2 = randomness.latent_noise(keys, jnp.arange(num_samples),
                                       model.latent_shape, model.top_dim)

  def loss_fn(params):
    out, updates = model.apply({"params": params, "batch_stats": state.batch_stats},
                               x, eps1, eps2, train=True, mutable=["batch_stats"])
    obj = objective_fn(out)
    return obj.loss, (obj, updates["batch_stats"])

  # Differentiate w.r.t. a per-device ("varying") view of the replicated parameters, so
  # each device gets the gradient of its own shard's loss; then average them. (Without
  # the cast, shard_map's transpose would psum gradients of replicated inputs itself.)
  local_params = jax.lax.pcast(state.params, BATCH_AXIS, to="varying")
  grads, (obj, batch_stats) = jax.grad(loss_fn, has_aux=True)(local_params)
  grads = jax.lax.pmean(grads, BATCH_AXIS)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  grad_norm = optax.tree.norm(grads)
  metrics = jax.lax.pmean({
      "loss": obj.loss,
      "bound": obj.bound.mean(),
      "recon": -obj.recon_ll.mean(),
      "kl": obj.kl_blocks.sum(-1).mean() + obj.kl_top.mean(),
      "kl_top": obj.kl_top.mean(),
      "kl_per_block": obj.kl_blocks.mean(0),  # [T]
  }, BATCH_AXIS)
  # A non-finite loss or gradient (on any device: both are averaged) never reaches the
  # state: parameters, BN statistics and optimizer state (Adam moments and count) keep
  # their old values; only the step advances, so the next step sees the next batch.
  finite = all_finite(metrics["loss"], grad_norm)
  params = keep_if(finite, params, state.params)
  opt_state = keep_if(finite, opt_state, state.opt_state)
  batch_stats = keep_if(finite, batch_stats, state.batch_stats)
  metrics["grad_norm"] = grad_norm
  metrics["param_norm"] = optax.tree.norm(params)
  metrics["skipped"] = 1.0 - finite.astype(jnp.float32)  # 1: update not applied
  new_state = TrainState(state.step + 1, params, batch_stats, opt_state)
  return new_state, metrics


def make_train_step(model, tx, objective_fn, mesh: Mesh, *, num_samples: int = 1):
  """Jitted `step(state, images, rng) -> (state, metrics)`; `state` is donated.

  images: global batch [B, 28, 28] uint8 sharded over 'batch'; rng: the run's key.
  model must carry bn_axis_name='batch' so BatchNorm statistics are global.
  """
  per_device = functools.partial(_train_step_per_device, model=model, tx=tx,
                                 objective_fn=objective_fn, num_samples=num_samples)
  return data_parallel(per_device, mesh, (P(), P(BATCH_AXIS), P()), (P(), P()),
                       model=model, donate_argnums=(0,))


def _eval_per_device(variables, images_binary, offset, rng, *, model):
  """True ELBO per image [b] with BN in inference mode, one latent sample per image."""
  keys = randomness.example_keys(rng, offset + global_indices(images_binary.shape[0]))
  eps1, eps2 = randomness.latent_noise(keys, jnp.arange(1), model.latent_shape,
                                       model.top_dim)
  out = model.apply(variables, images_binary[..., None].astype(jnp.float32), eps1, eps2)
  weights = jnp.ones((model.num_blocks,))
  return objectives.elbo(out, weights).bound


def make_elbo_eval(model, mesh: Mesh):
  """Jitted `elbo(variables, images_binary [B, 28, 28], offset, rng) -> [B]`."""
  per_device = functools.partial(_eval_per_device, model=model)
  return data_parallel(per_device, mesh, (P(), P(BATCH_AXIS), P(), P()), P(BATCH_AXIS),
                       model=model)


def evaluate_elbo(elbo_fn, variables, images_binary: np.ndarray, mesh: Mesh, *,
                  batch_size: int = 500, seed: int = 0) -> np.ndarray:
  """True ELBO (nats) of every image in images_binary [N, 28, 28], one sample each.

  elbo_fn: from `make_elbo_eval` (built once per run, so it compiles once).
  """
  variables, rng = replicate(mesh, variables), jax.random.key(seed)
  return map_batches(lambda b, off: elbo_fn(variables, b, off, rng), images_binary, mesh,
                     batch_size)
