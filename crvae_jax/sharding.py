"""Data parallelism over a 1-D device mesh, apart from any model's step.

The mesh has one named axis, 'batch'. A global batch [B, ...] is split along B over
it (`shard_batch`, `from_process_rows`); parameters are replicated (`replicate`).
Every step and evaluator is a per-device function mapped with `data_parallel`
(`jax.shard_map`, then `compiled.jit`, which adds the CPU compiler options). In a
multi-process run (`crvae_jax.distributed`) the mesh spans every process's devices and
each process feeds only the rows its own devices hold.
"""

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from crvae_jax import compiled

BATCH_AXIS = "batch"


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


def padded_batch_size(batch_size: int, mesh: Mesh) -> int:
  """batch_size rounded up to a multiple of the mesh's device count (what map_batches
  feeds per call)."""
  return -(-batch_size // mesh.size) * mesh.size


def map_batches(fn: Callable, data: np.ndarray, mesh: Mesh, batch_size: int,
                progress=None) -> np.ndarray:
  """Apply fn(sharded_batch, offset) -> [b, ...] to every row of data [N, ...].

  batch_size is rounded up to a multiple of the device count; the last batch is padded
  with zeros and the padded rows are dropped, so every row is processed exactly once.
  `offset` (int32) is the global index of the batch's first row. `progress` (a tqdm bar)
  is advanced by the number of real rows. In a multi-process run every process calls it
  with the same data; each feeds its own rows and all get the whole result.
  """
  batch_size = padded_batch_size(batch_size, mesh)
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


def global_indices(local_batch: int) -> jax.Array:
  """Global example indices of this device's shard (inside shard_map)."""
  return jax.lax.axis_index(BATCH_AXIS) * local_batch + jnp.arange(local_batch)



def data_parallel(per_device: Callable, mesh: Mesh, in_specs, out_specs, *, model=None,
                  donate_argnums=()) -> Callable:
  """`per_device` mapped over the mesh (`jax.shard_map`) and jitted with the compiler
  options of `model`'s kernels (`compiled.jit`)."""
  mapped = jax.shard_map(per_device, mesh=mesh, in_specs=in_specs, out_specs=out_specs)
  return compiled.jit(mapped, model=model, donate_argnums=donate_argnums)
