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
  data, a --workdir that is a file, a locked workdir, a failed save) printed as one line
  and exit status 1, no traceback; so is a bad `--config` (`parse_flags`: a config file
  that is not there, an override `--config.<field>` of a field the config lacks).

The huge-page restart (`crvae_jax.host_memory.reexec_with_hugepages`) is the entry
points' first call, in their `__main__` block, before JAX is imported.
"""

import logging as py_logging
import os
import re
import sys
import traceback

from absl import app, flags, logging

DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "crvae_jax",
                                 "jax_cache")
# Programs that compile faster than this are not worth a disk entry (every tiny eager
# op compiles too).
MIN_COMPILE_TIME_S = 0.2
FLAGS = flags.FLAGS

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
            FileNotFoundError, NotADirectoryError]
  errors += [checkpoints.CheckpointSaveError, checkpoints.CheckpointDamagedError,
             checkpoints.ConfigJsonDamagedError, workdir_lock.WorkdirLockedError]
  return tuple(errors)


def fail(message: str) -> None:
  """Ends the program: `error: <message>` on one line, exit status 1."""
  print(f"error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
  sys.exit(1)


def _config_flags() -> list:
  """The names of the ml_collections config flags defined (main.py's --config)."""
  # pylint: disable-next=g-import-not-at-top
  from ml_collections.config_flags import config_flags
  return [name for name in FLAGS if config_flags.is_config_flag(FLAGS[name])
          and FLAGS[name].name == name]


def _config_argv(argv: list, name: str) -> tuple:
  """(the argument of --<name> or None, the override paths of its --<name>.<path>) in
  argv, read as ml_collections reads them (_ConfigFlag._GetOverrides)."""
  try:
    argv = FLAGS.read_flags_from_files(argv, force_gnu=False)
  except flags.Error:
    pass  # (absl's parsing reports it)
  argument, overrides = None, []
  for i, arg in enumerate(argv[1:], 1):
    if re.match(rf"-{{1,2}}{name}=", arg):
      argument = arg.split("=", 1)[1]
    elif re.fullmatch(rf"-{{1,2}}{name}", arg) and i + 1 < len(argv):
      argument = argv[i + 1]
    elif re.match(rf"-{{1,2}}(no)?{name}\.", arg):
      path = arg.split("=", 1)[0].split(".", 1)[1]
      overrides = [p for p in overrides if p != path] + [path]
  return argument, overrides


def _override_error(argv: list, error: Exception) -> str:
  """The message for ml_collections' `error` from applying a config override: the
  override named, with what the config lacks (and ml_collections' did-you-mean)."""
  text = error  # (an AttributeError(KeyError(str)) for a ConfigDict's missing field)
  while isinstance(text, BaseException) and text.args and isinstance(
      text.args[0], (str, BaseException)):
    text = text.args[0]
  lines = str(text).splitlines() or [repr(error)]
  missing = re.fullmatch(r"'([^']*)'", lines[0])
  overrides = [(name, path) for name in _config_flags()
               for path in _config_argv(argv, name)[1]]
  for name, path in overrides:
    parts = re.split(r"[.\[\]]+", path)
    if missing and isinstance(error, (KeyError, AttributeError)) and (
        missing[1] in parts):
      owner = ".".join([name] + parts[:parts.index(missing[1])])
      hint = " ".join(lines[1:])
      return (f"--{name}.{path}: {owner} has no field '{missing[1]}'"
              + (f"; {hint}" if hint else ""))
  named = ", ".join(f"--{name}.{path}" for name, path in overrides) or "--config"
  return f"{named}: {' '.join(str(text).split())}"


def parse_flags(argv: list) -> list:
  """`app.parse_flags_with_usage` (absl's flag parsing; `run` passes it to app.run),
  with a bad ml_collections config flag (--config) ended by `fail` instead of a
  traceback: a config file that is not there or cannot be read (before it is run), an
  override --config.<path> the config cannot take (ml_collections raises a KeyError,
  AttributeError, ... from inside its flag parsing)."""
  for name in _config_flags():
    argument = _config_argv(argv, name)[0]
    path = argument.split(":", 1)[0] if argument is not None else None
    if path is None:
      continue
    if not os.path.isfile(path):
      fail(f"--{name}: no config file {path}")
    try:
      with open(path, "rb"):
        pass
    except OSError as e:
      fail(f"--{name}: cannot read config file {path}: {e.strerror or e}")
  try:
    return app.parse_flags_with_usage(argv)
  except (KeyError, AttributeError, IndexError, TypeError, ValueError, OSError) as e:
    inner = traceback.extract_tb(e.__traceback__)[-1].filename
    if f"{os.sep}ml_collections{os.sep}" not in inner:
      raise
    fail(_override_error(argv, e))


def run(main, more_errors: tuple = ()) -> None:
  """`app.run(main)` with `parse_flags`; a known error (`known_errors`, or one of the
  program's own `more_errors`) ends the program with its message on one line and exit
  status 1."""
  def guarded(argv):
    try:
      return main(argv)
    except known_errors() + tuple(more_errors) as e:  # pylint: disable=catching-non-exception
      fail(str(e))
  app.run(guarded, flags_parser=parse_flags)
