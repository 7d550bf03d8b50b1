"""What the entry points (experiments.main, experiments.mnist_table) do around the library.

- `--compilation_cache_dir`: JAX's persistent compilation cache, on by default under
  ~/.cache/crvae_jax/jax_cache ('' turns it off). A repeated start reads the compiled
  train step, evaluators and estimator from disk instead of compiling them again
  (first and repeat start: benchmarks/startup.py, benchmarks/RESULTS.md).
- logging: crvae_jax's messages (absl INFO: progress, validation, results) are shown;
  other libraries' INFO messages (Orbax logs every file operation) are not, their
  warnings are.
- `run(main)`: `app.run(main)`, with the project's known errors (an impossible config, a
  checkpoint of another model, a run stopped by non-finite steps, a missing workdir or
  data, a locked workdir, a failed save) printed as one line and exit status 1, no
  traceback.

The huge-page restart (`crvae_jax.host_memory.reexec_with_hugepages`) is the entry
points' first call, in their `__main__` block, before JAX is imported.
"""

import logging as py_logging
import os
import sys

from absl import app, flags, logging

DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "crvae_jax",
                                 "jax_cache")
# Programs that compile faster than this are not worth a disk entry (every tiny eager
# op compiles too).
MIN_COMPILE_TIME_S = 0.2

flags.DEFINE_string("compilation_cache_dir", DEFAULT_CACHE_DIR,
                    "JAX's persistent compilation cache ('' turns it off).")


def enable_compilation_cache(path: str) -> None:
  """Cache compiled programs in `path` ('' or None: leave the cache off)."""
  if not path:
    return
  import jax  # pylint: disable=g-import-not-at-top
  os.makedirs(path, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_TIME_S)


OURS = tuple(f"{os.sep}{package}{os.sep}" for package in ("crvae_jax", "experiments",
                                                          "benchmarks"))


class _OnlyOurInfo(py_logging.Filter):
  """Keeps every WARNING and above, INFO and below only from this project's code (Orbax
  logs each file operation at INFO, JAX its backend search)."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    return record.levelno >= py_logging.WARNING or any(p in record.pathname for p in OURS)


def configure_logging() -> None:
  """crvae_jax's INFO messages on stderr, without other libraries' INFO chatter.
  Processes other than 0 of a multi-process run show warnings only."""
  from crvae_jax import distributed  # pylint: disable=g-import-not-at-top
  for handler in (logging.get_absl_handler(), *py_logging.getLogger().handlers):
    if not any(isinstance(f, _OnlyOurInfo) for f in handler.filters):
      handler.addFilter(_OnlyOurInfo())
  # (is_main starts JAX's backend, which logs its platform search: filtered above.)
  logging.set_verbosity(logging.INFO if distributed.is_main() else logging.WARNING)


def known_errors() -> tuple:
  """The project's errors that explain themselves (printed as one line by `run`)."""
  # pylint: disable=g-import-not-at-top
  from crvae_jax import config_checks, distributed
  from crvae_jax.data import DataError
  from crvae_jax.train import checkpoints, guards, workdir_lock
  # pylint: enable=g-import-not-at-top
  errors = [config_checks.ConfigError, checkpoints.CheckpointMismatchError,
            guards.NonFiniteError, distributed.DistributedError, DataError,
            FileNotFoundError]
  errors += [checkpoints.CheckpointSaveError, checkpoints.CheckpointDamagedError,
             checkpoints.ConfigJsonDamagedError, workdir_lock.WorkdirLockedError]
  return tuple(errors)


def run(main) -> None:
  """`app.run(main)`; a known error (`known_errors`) ends the program with its message
  on one line and exit status 1."""
  def guarded(argv):
    try:
      return main(argv)
    except known_errors() as e:  # pylint: disable=catching-non-exception
      print(f"error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
      sys.exit(1)
  app.run(guarded)
