"""The data-parallel training step: written once per device, mapped over a 1-D mesh.

`jax.shard_map` splits the global batch over the named axis 'batch'; each device
binarizes its shard, runs the model, and the gradients (and BatchNorm batch statistics,
through BatchNorm's `axis_name`) are averaged with `lax.pmean`. Parameters and optimizer
state are replicated. Every random draw is keyed by (rng, step, global example index)
(see `crvae_jax.randomness`), so 1 device and N devices compute the same update.
"""

import functools
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from crvae_jax import objectives, randomness
from crvae_jax.models import layers

BATCH_AXIS = "batch"


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # [] int32
  params: Any
  batch_stats: Any
  opt_state: Any


def make_mesh(num_devices: int | None = None) -> Mesh:
  """1-D mesh over the first `num_devices` devices (default: all) with axis 'batch'.

  In a multi-process run (`crvae_jax.distributed`) the mesh spans every process's
  devices, ordered by process, and must use all of them.
  """
  devices = jax.devices()
  if num_devices is not None:
    if num_devices > len(devices):
      raise ValueError(f"asked for {num_devices} devices, only {len(devices)} exist")
    if jax.process_count() > 1 and num_devices != len(devices):
      raise ValueError(
          f"train.num_devices={num_devices} in a run of {jax.process_count()} processes "
          f"with {len(devices)} devices: a multi-process mesh uses every device; leave "
          "train.num_devices unset (None)")
    devices = devices[:num_devices]
  return Mesh(np.array(devices), (BATCH_AXIS,))


def process_rows(mesh: Mesh, global_batch: int) -> slice:
  """The rows of a global batch [B, ...] that this process's devices hold (all of them
  in a single-process run; a contiguous block per process otherwise)."""
  if global_batch % mesh.size:
    raise ValueError(f"batch of {global_batch} does not split over {mesh.size} devices")
  per_device = NamedSharding(mesh, P(BATCH_AXIS)).addressable_devices_indices_map(
      (global_batch,))
  blocks = sorted(index[0].indices(global_batch)[:2] for index in per_device.values())
  lo, hi = blocks[0][0], blocks[-1][1]
  if sum(b - a for a, b in blocks) != hi - lo:
    raise ValueError(f"this process's devices hold non-contiguous rows {blocks}")
  return slice(lo, hi)


def shard_batch(mesh: Mesh, source, indices=None) -> jax.Array:
  """The global batch source[indices] ([B, ...]; all of source if indices is None),
  split along B over the mesh (B % devices == 0).

  Each process gathers (loads) only the rows its own devices hold, so in a multi-process
  run every process passes the same `indices` and reads a different part of them.
  """
  size = len(source) if indices is None else len(indices)
  rows = process_rows(mesh, size)
  local = source[rows] if indices is None else source[np.asarray(indices)[rows]]
  return from_process_rows(mesh, local, size)


def from_process_rows(mesh: Mesh, local, global_batch: int) -> jax.Array:
  """The global batch [global_batch, ...] of which this process holds rows
  `process_rows(mesh, global_batch)` (all of them on one host), split over the mesh."""
  local = np.asarray(local)
  expected = len(range(global_batch)[process_rows(mesh, global_batch)])
  if len(local) != expected:
    raise ValueError(f"this process holds {len(local)} rows of a batch of {global_batch}; "
                     f"its devices take {expected}")
  return jax.make_array_from_process_local_data(NamedSharding(mesh, P(BATCH_AXIS)), local,
                                                (global_batch,) + local.shape[1:])


def replicate(mesh: Mesh, tree):
  """`tree` placed whole on every device of the mesh. Every process must pass the same
  values (host arrays, or arrays on its own devices, e.g. a restored checkpoint)."""
  if jax.process_count() > 1:  # device_put cannot move one process's arrays to another's
    tree = jax.tree.map(
        lambda x: np.asarray(x) if isinstance(x, jax.Array) and x.is_fully_addressable
        else x, tree)
  return jax.device_put(tree, NamedSharding(mesh, P()))


def to_host(array: jax.Array) -> np.ndarray:
  """A device array as numpy, whole and identical on every process (gathers the other
  processes' shards in a multi-process run)."""
  if array.is_fully_addressable or array.is_fully_replicated:
    return np.asarray(array)
  return np.asarray(multihost_utils.process_allgather(array, tiled=True))


def local_copy(tree):
  """A replicated tree as arrays on this process's first device (for work one process
  does alone, such as drawing sample grids, with no collectives)."""
  return jax.tree.map(
      lambda x: x.addressable_data(0) if isinstance(x, jax.Array)
      and not x.is_fully_addressable else x, tree)


def map_batches(fn: Callable, data: np.ndarray, mesh: Mesh, batch_size: int,
                progress=None) -> np.ndarray:
  """Apply fn(sharded_batch, offset) -> [b, ...] to every row of data [N, ...].

  batch_size is rounded up to a multiple of the device count; the last batch is padded
  with zeros and the padded rows are dropped, so every row is processed exactly once.
  `offset` (int32) is the global index of the batch's first row. `progress` (a tqdm bar)
  is advanced by the number of real rows. In a multi-process run every process calls it
  with the same data; each feeds its own rows and all get the whole result.
  """
  batch_size = -(-batch_size // mesh.size) * mesh.size
  outputs = []
  for lo in range(0, len(data), batch_size):
    batch = data[lo:lo + batch_size]
    real = batch.shape[0]
    if real < batch_size:
      pad = np.zeros((batch_size - real,) + batch.shape[1:], batch.dtype)
      batch = np.concatenate([batch, pad])
    outputs.append(to_host(fn(shard_batch(mesh, batch), jnp.int32(lo)))[:real])
    if progress is not None:
      progress.update(real)
  return np.concatenate(outputs)


def make_objective(objective_config, num_blocks: int) -> Callable:
  """ModelOutput -> objectives.Objective for config.objective (kind 'elbo' or 'iwae')."""
  weights = objectives.block_weights(num_blocks, objective_config.beta,
                                     objective_config.get("beta_first_blocks"))
  if objective_config.kind == "elbo":
    return lambda out: objectives.elbo(out, weights, objective_config.beta)
  if objective_config.kind == "iwae":
    return lambda out: objectives.iwae_bound(out, weights, objective_config.beta)
  raise ValueError(f"objective.kind must be 'elbo' or 'iwae', got {objective_config.kind!r}")


def keep_if(ok: jax.Array, new, old):
  """`new` where the [] bool `ok` holds, else `old`, leaf by leaf (the non-finite skip)."""
  return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)


def global_indices(local_batch: int) -> jax.Array:
  """Global example indices of this device's shard (inside shard_map)."""
  return jax.lax.axis_index(BATCH_AXIS) * local_batch + jnp.arange(local_batch)


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
  finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
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
  mapped = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(BATCH_AXIS), P()),
                         out_specs=(P(), P()))
  return jax.jit(mapped, donate_argnums=(0,),
                 compiler_options=layers.model_compiler_options(model))


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
  return jax.jit(jax.shard_map(per_device, mesh=mesh,
                               in_specs=(P(), P(BATCH_AXIS), P(), P()),
                               out_specs=P(BATCH_AXIS)),
                 compiler_options=layers.model_compiler_options(model))


def evaluate_elbo(elbo_fn, variables, images_binary: np.ndarray, mesh: Mesh, *,
                  batch_size: int = 500, seed: int = 0) -> np.ndarray:
  """True ELBO (nats) of every image in images_binary [N, 28, 28], one sample each.

  elbo_fn: from `make_elbo_eval` (built once per run, so it compiles once).
  """
  variables, rng = replicate(mesh, variables), jax.random.key(seed)
  return map_batches(lambda b, off: elbo_fn(variables, b, off, rng), images_binary, mesh,
                     batch_size)
