"""Multi-host runs on JAX's own multi-process runtime (`jax.distributed`).

One Python process per host (or per GPU), all running the same command. After
`initialize`, `jax.devices()` lists every process's devices, the training mesh spans all
of them (`sharding.make_mesh`), each process feeds only the rows of every batch that its
own devices hold (`sharding.shard_batch`), and Orbax writes one logical checkpoint.
Files other than checkpoints (metrics, PNGs, JSON results) are written by process 0 only
(`is_main`). Nothing in the configs changes.

  TPU pod slice / Slurm / Open MPI:  initialize(auto=True)  (JAX detects the cluster)
  anything else:  initialize("10.0.0.1:1234", num_processes=4, process_id=<0..3>)
"""

from typing import Optional

from absl import logging
import jax


class DistributedError(RuntimeError):
  """A multi-process setting that cannot work (names the flag)."""


def initialize(coordinator_address: Optional[str] = None,
               num_processes: Optional[int] = None, process_id: Optional[int] = None, *,
               auto: bool = False, timeout_s: int = 300) -> bool:
  """Join a multi-process run; returns True if one was joined, False for one process.

  Give coordinator_address ('host:port' of process 0), num_processes and process_id, or
  auto=True to let JAX detect them (TPU pods, Slurm, Open MPI). Must run before any JAX
  computation. On the CPU backend, collectives between processes go through gloo.
  """
  explicit = (coordinator_address, num_processes, process_id)
  if not auto and all(v is None for v in explicit):
    return False
  if not auto and any(v is None for v in explicit):
    missing = [n for n, v in zip(("coordinator_address", "num_processes", "process_id"),
                                 explicit) if v is None]
    raise DistributedError(
        f"multi-process run: also give --{', --'.join(missing)} (or --distributed_auto "
        "on a TPU pod, Slurm or Open MPI, where JAX detects them)")
  if num_processes is not None and not 0 <= (process_id or 0) < num_processes:
    raise DistributedError(f"--process_id={process_id} must be in [0, {num_processes})")
  # Only the CPU backend reads this; GPUs and TPUs use their own collectives.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address, num_processes, process_id,
                             initialization_timeout=timeout_s)
  return True


def is_main() -> bool:
  """True in the process that writes files other than checkpoints (process 0)."""
  return jax.process_index() == 0


def describe() -> str:
  """'2 processes x 1 device (cpu)' or '1 process x 2 devices (cpu)'."""
  n, local = jax.process_count(), jax.local_device_count()
  return (f"{n} process{'es' if n > 1 else ''} x {local} device{'s' if local > 1 else ''} "
          f"({jax.devices()[0].platform})")


def info(message: str) -> None:
  """`logging.info(message)` in process 0 only: one copy of every message of a run."""
  if is_main():
    logging.info(message, stacklevel=2)  # the record names the caller
