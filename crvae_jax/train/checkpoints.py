"""Orbax checkpoints: the latest training state, and the best state by validation ELBO.

<workdir>/checkpoints/<step>/  full TrainState (params, batch_stats, opt_state, step),
                                the last `keep` saves.
<workdir>/best/<step>/          the state with the highest validation ELBO so far
                                (Orbax keeps the best one by its recorded metric).
<workdir>/<dir>_damaged/        steps that failed verification or could not be restored,
                                set aside (kept) so the run can save those steps again.
<workdir>/config.json           the run's config, written when the run starts.

Every step carries the sha256 of its files (`checkpoint_integrity`), written once Orbax
has finalised the save and checked before each restore. Use `Checkpoints` as a context
manager: on every exit, including errors, it waits for and closes Orbax's managers, so
no background thread reports after the real error.
"""

import atexit
import json
import os
import re
import warnings
import weakref
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from crvae_jax.train import checkpoint_integrity as integrity

BEST_METRIC = "valid_elbo"


class CheckpointMismatchError(ValueError):
  """The checkpoint's arrays do not match the model's (paths and shapes are named)."""


class CheckpointSaveError(RuntimeError):
  """A save failed (at once or in the background): which step, why, and which earlier
  checkpoint is intact, in one line."""


class ConfigJsonDamagedError(ValueError):
  """A workdir's config.json cannot be read; the message names the file."""


class CheckpointDamagedError(RuntimeError):
  """The checkpoint asked for by name (the best one, or a given step) is damaged; it was
  set aside."""


def _path_name(path) -> str:
  """'params/decoder/Conv_0/kernel' for a pytree path (dict keys, attributes, indices)."""
  names = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        names.append(str(getattr(k, attr)))
        break
  return "/".join(names)


def shape_differences(step_dir: str, target: Any) -> list:
  """['params/decoder/...: checkpoint (64,) != model (32,)', ...]; [] if they fit or
  the checkpoint's metadata cannot be read (then it is damaged, not another model)."""
  handler = ocp.StandardCheckpointHandler()
  try:
    saved_tree = handler.metadata(epath.Path(step_dir) / "default")
  except Exception:  # pylint: disable=broad-except
    return []
  finally:
    handler.close()
  flat = lambda tree: {_path_name(p): tuple(getattr(v, "shape", ()))
                       for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}
  saved, wanted = flat(saved_tree), flat(target)
  if not saved:  # unreadable metadata: a damaged checkpoint, not another model
    return []
  diffs = [f"{k}: in the checkpoint, not in the model"
           for k in sorted(set(saved) - set(wanted))]
  diffs += [f"{k}: in the model, not in the checkpoint"
            for k in sorted(set(wanted) - set(saved))]
  diffs += [f"{k}: checkpoint {saved[k]} != model {wanted[k]}"
            for k in sorted(set(saved) & set(wanted)) if saved[k] != wanted[k]]
  return sorted(diffs, key=lambda d: not d.startswith("params/"))  # parameters first


def _reason(error) -> str:
  """One line for an exception of Orbax/TensorStore/the OS: the OS error when there is
  one ('No space left on device'), else the first line of the message."""
  if isinstance(error, str):
    return error
  text = str(error)
  code = re.search(r"os_error_code='?(\d+)", text)
  if code:
    return f"{os.strerror(int(code.group(1)))} (errno {code.group(1)})"
  if isinstance(error, OSError) and error.strerror:
    where = f": {error.filename}" if error.filename else ""
    return f"{error.strerror} (errno {error.errno}){where}"
  first = text.splitlines()[0] if text else ""
  return f"{type(error).__name__}: {first[:300]}"


def _any_process(flag: bool) -> bool:
  """True on every process if `flag` is True on any (a collective: every process calls
  it at the same point)."""
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))


_TEXT_BYTES = 1024


def _from_process_0(text: Optional[str]) -> Optional[str]:
  """Process 0's `text` (None or a string) on every process (a collective)."""
  if jax.process_count() == 1:
    return text
  raw = (text or "").encode("utf-8")[:_TEXT_BYTES - 1]
  buf = np.zeros(_TEXT_BYTES, np.uint8)  # [0]: 1 if text is not None; then the bytes
  buf[0] = text is not None
  buf[1:1 + len(raw)] = np.frombuffer(raw, np.uint8)
  buf = np.asarray(multihost_utils.broadcast_one_to_all(buf))
  if not buf[0]:
    return None
  return bytes(buf[1:]).rstrip(b"\0").decode("utf-8", "replace")


_OPEN = weakref.WeakSet()  # Checkpoints not closed yet: closed quietly at exit
_NOTED_UNVERIFIED = set()  # directories already told that their steps have no digest


@atexit.register
def _close_all_quietly():
  for ckpts in list(_OPEN):
    ckpts.close_quietly()


class Checkpoints:
  """The run's two Orbax `CheckpointManager`s (latest and best; `best=False`: latest
  only, for runs without a validation metric such as the GANs).

  Saves run in the background. A failed save raises CheckpointSaveError at the next call
  to `check()` (cheap: call it every step; with several processes it does nothing),
  `save_*`, `wait()` or `close()`; the unfinished files of that save are removed. With
  several processes, the decisions that branch (a step's digest, a restore that
  failed, a failed save once Orbax's own barriers are passed, a new best) are taken
  together; a failure inside Orbax before its own barrier leaves the others waiting
  there until Orbax's timeout. Use as a context manager:

    with Checkpoints(workdir) as ckpts:
      state, step = ckpts.restore(state)
      ...
      ckpts.save_latest(step, state)
      ckpts.check()
  """

  def __init__(self, workdir: str, keep: int = 2, best: bool = True,
               keep_every: int = 0):
    """keep: the latest steps kept; keep_every > 0 also keeps every step that is a
    multiple of it (train.keep_checkpoint_every_steps: to score a run along its
    training), through Orbax's preservation policies."""
    workdir = os.path.abspath(workdir)
    integrity.quiet_failure_noise()
    policies = ocp.checkpoint_managers  # Orbax's preservation policies (not max_to_keep,
    # which Orbax deprecates): one way to say what each manager keeps
    keep_latest = [policies.LatestN(keep)] + (
        [policies.EveryNSteps(keep_every)] if keep_every > 0 else [])
    self.latest = ocp.CheckpointManager(
        os.path.join(workdir, "checkpoints"),
        options=ocp.CheckpointManagerOptions(
            create=True, preservation_policy=policies.AnyPreservationPolicy(keep_latest)))
    best_metric = lambda m: m[BEST_METRIC]
    self.best = None if not best else ocp.CheckpointManager(
        os.path.join(workdir, "best"),
        options=ocp.CheckpointManagerOptions(
            create=True, best_fn=best_metric, best_mode="max",  # best_step() reads these
            preservation_policy=policies.BestN(
                get_metric_fn=best_metric, reverse=False, n=1,
                keep_checkpoints_without_metrics=False)))
    self._pending = {}  # manager name -> step of its save in flight
    self._closed = False
    self._barriers = 0  # multi-process: barriers passed (their names must differ)
    _OPEN.add(self)

  def __enter__(self) -> "Checkpoints":
    return self

  def __exit__(self, exc_type, exc, tb) -> bool:
    if exc_type is None:  # every process gets here at the same point: decide together
      self.close(agree=True)
    else:  # the error in flight is the one to see; a save error here is one log line
      self.close_quietly()
    return False

  def _named_managers(self) -> dict:
    return {n: m for n, m in (("latest", self.latest), ("best", self.best))
            if m is not None}

  def _managers(self):
    return list(self._named_managers().values())

  # Saving.

  def _save_error(self, name: str, step: Optional[int], error) -> CheckpointSaveError:
    manager = self._named_managers()[name]
    directory = str(manager.directory)
    left = integrity.remove_unfinished_saves(directory, step) if (
        step is not None and jax.process_index() == 0) else []
    manager.reload()
    earlier = sorted(s for s in manager.all_steps() if s != step)
    kind = "best checkpoint" if name == "best" else "checkpoint"
    intact = (f"The previous {kind}, step {earlier[-1]}, is intact" if earlier else
              f"There is no earlier {kind}")
    tidy = (f"; its unfinished files are left in {', '.join(left)}" if left else
            "; its unfinished files were removed")
    return CheckpointSaveError(
        f"saving {kind} step {step} in {directory} failed: {_reason(error)}. {intact}"
        f"{tidy}. Free disk space (or fix the cause) and rerun the same command"
        + (f" to resume from step {earlier[-1]}." if earlier and name == "latest" else "."))

  def _settle(self, name: str, agree: bool = False) -> None:
    """Wait for `name`'s save in flight; raise CheckpointSaveError if it failed, else
    write its digest (process 0). agree (multi-process; every process must call it at
    the same point): the processes decide together, so a save that failed on one of them
    stops all of them at once instead of leaving the others waiting in their next
    collective."""
    manager = self._named_managers()[name]
    step = self._pending.pop(name, None)
    error = None
    try:
      manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      error = self._save_error(name, step, e)
    if error is None and step is not None and jax.process_index() == 0:
      step_dir = os.path.join(str(manager.directory), str(step))
      if not os.path.isdir(step_dir):
        error = self._save_error(name, step,
                                 "Orbax did not finalise it (its log above says why)")
      else:
        try:
          integrity.write_digest(step_dir)
        except OSError as e:
          error = CheckpointSaveError(
              f"checkpoint step {step} in {step_dir} was written but its digest could "
              f"not be ({_reason(e)}); it will restore unverified. Free disk space and "
              "rerun.")
    if agree and step is not None and _any_process(error is not None) and error is None:
      error = CheckpointSaveError(
          f"saving {'best checkpoint' if name == 'best' else 'checkpoint'} step {step} in "
          f"{manager.directory} failed on another process (its log says why); rerun the "
          "same command once the cause is fixed")
    if error is not None:
      raise error

  def check(self) -> None:
    """Raise CheckpointSaveError if a background save has failed; never waits for one
    that is still running. Cheap enough to call after every step. Multi-process: does
    nothing (whether a save has finished differs between processes); every process
    settles its save together at the next save or `wait()`."""
    if jax.process_count() > 1:
      return
    for name, manager in self._named_managers().items():
      if name in self._pending and not manager.is_saving_in_progress():
        self._settle(name)

  def _save(self, name: str, step: int, state, metrics: Optional[dict] = None) -> None:
    # In a multi-process run each manager finalizes a save with barriers named the same
    # in both managers; two saves in flight at once collide ("Barrier ... is already
    # ongoing"). One save at a time there; on one process saves overlap with training.
    if jax.process_count() > 1:
      self.wait()
    else:
      self._settle(name)
      self.check()
    manager = self._named_managers()[name]
    try:
      manager.save(int(step), args=ocp.args.StandardSave(state), metrics=metrics,
                   force=True)
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(name, int(step), e) from None
    self._pending[name] = int(step)

  def save_latest(self, step: int, state) -> None:
    """Start saving `state` as step `step` (in the background; see `check`)."""
    self._save("latest", step, state)

  def save_now(self, step: int, state, last_saved: Optional[int]) -> None:
    """Save `state` as step `step` unless `last_saved` is that step, and wait until it is
    on disk (before the process exits)."""
    if last_saved != step:
      self.save_latest(step, state)
    self.wait()

  def best_value(self) -> Optional[float]:
    """The validation ELBO of the kept best checkpoint, or None."""
    step = self.best.best_step()
    try:
      metrics = None if step is None else self.best.metrics(step)
    except Exception as e:  # pylint: disable=broad-except
      logging.warning("best checkpoint step %s: its metric cannot be read (%s); a new "
                      "best will replace it", step, _reason(e))
      return None
    return None if not metrics else float(metrics[BEST_METRIC])

  def save_best_if_better(self, step: int, state, valid_elbo: float) -> bool:
    """Start saving `state` as the best checkpoint if valid_elbo beats the kept one."""
    better = None  # process 0 decides (a misread on one process must not split them)
    if jax.process_index() == 0:
      best = self.best_value()
      better = "yes" if best is None or valid_elbo > best else None
    if _from_process_0(better) is None:
      return False
    self._save("best", step, state, metrics={BEST_METRIC: float(valid_elbo)})
    return True

  # Restoring.

  def _set_aside(self, manager, step: int, reason: str) -> str:
    """Move a damaged step aside (process 0; all processes then re-read the steps)."""
    step_dir = os.path.join(str(manager.directory), str(step))
    manager.reload()
    deleted = step not in manager.all_steps()  # (by the run that wrote it, meanwhile)
    if jax.process_count() > 1:
      # Every process has listed the steps before process 0 moves one: a listing that
      # meets a step directory as it moves fails (Orbax stats each step it lists).
      self._barriers += 1
      ocp.multihost.sync_global_processes(f"crvae_jax_set_aside_{self._barriers}")
    if deleted:
      dest = "it was deleted meanwhile"
    elif jax.process_index() == 0:
      dest = integrity.set_aside(step_dir, reason)
      dest = (f"moved to {dest}" if dest else "it could not be moved aside "
              "(read-only?); move it out of the way by hand")
    else:
      dest = "moved aside by process 0"
    if jax.process_count() > 1:
      self._barriers += 1
      ocp.multihost.sync_global_processes(f"crvae_jax_set_aside_{self._barriers}")
    manager.reload()
    return dest

  def restore(self, target: Any, which: str = "latest", step: Optional[int] = None):
    """Restore into the structure of `target` (arrays or ShapeDtypeStructs).

    which: 'latest' (newest training state) or 'best' (best validation ELBO).
    Returns (state, step) or (None, None) when there is no checkpoint. Before Orbax reads
    a step its files are checked against their digest (steps written before digests
    existed restore unverified, with a one-time note). A damaged step (digest mismatch,
    or Orbax cannot read it) is set aside (`<dir>_damaged/<step>-<time>/`, kept) with
    a RuntimeWarning, and for 'latest' the previous step is used; a damaged best
    checkpoint, or a damaged `step` asked for, raises CheckpointDamagedError. A step whose
    arrays do not fit `target` raises CheckpointMismatchError naming the parameter paths
    and shapes. (A save killed half-way never becomes a step: Orbax writes to a
    temporary directory and renames it when complete.)
    """
    manager = {"latest": self.latest, "best": self.best}.get(which)
    if which == "best" and manager is None:
      raise ValueError("this run keeps no best checkpoint (no validation metric)")
    if manager is None:
      raise ValueError(f"checkpoint must be 'latest' or 'best', got {which!r}")
    if step is not None:
      candidates = [step] if step in manager.all_steps() else []
    elif which == "best":
      candidates = [] if manager.best_step() is None else [manager.best_step()]
    else:
      candidates = sorted(manager.all_steps(), reverse=True)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    for s in candidates:
      step_dir = os.path.join(str(manager.directory), str(s))
      diffs = shape_differences(step_dir, target)
      if _any_process(bool(diffs)):
        diffs = diffs or ["(found by another process; its log names them)"]
        raise CheckpointMismatchError(
            f"checkpoint {step_dir} does not fit this model ({len(diffs)} "
            "difference(s)); was it written with another config?\n  "
            + "\n  ".join(diffs[:20]))
      # Process 0 verifies the digest and every process follows its verdict; then a
      # step that any process cannot read is damaged for all (multi-process runs must
      # take the same branch, or they wait in different barriers).
      problem = None
      if jax.process_index() == 0:
        if integrity.has_digest(step_dir):
          problem = integrity.verify(step_dir)
        elif str(manager.directory) not in _NOTED_UNVERIFIED:
          _NOTED_UNVERIFIED.add(str(manager.directory))
          logging.warning("checkpoint %s has no digest (written before checkpoints "
                          "carried one): restored without verification", step_dir)
      problem = _from_process_0(problem)
      if problem is None:
        restored = None
        try:
          restored = manager.restore(s, args=ocp.args.StandardRestore(abstract))
        except Exception as e:  # pylint: disable=broad-except
          problem = _reason(e)
        if _any_process(problem is not None) and problem is None:
          problem = "another process could not read it (its log says why)"
        if problem is None:
          return restored, s
      where = self._set_aside(manager, s, problem)
      if which == "best" or step is not None:
        name = "best checkpoint" if which == "best" else f"checkpoint step {s}"
        raise CheckpointDamagedError(
            f"the {name} {step_dir} cannot be restored ({problem}); {where}. "
            + ("Use the latest checkpoint instead (e.g. --config.eval.checkpoint=latest)"
               if which == "best" else "Use another step") + ".")
      warnings.warn(f"checkpoint {step_dir} cannot be restored ({problem}); {where}; "
                    "trying the previous one", RuntimeWarning)
    return None, None

  # Ending.

  def wait(self) -> None:
    """Wait for the saves in flight; CheckpointSaveError if one failed (on any process:
    every process calls this at the same step)."""
    for name in self._named_managers():
      self._settle(name, agree=True)

  def close(self, agree: bool = False) -> None:
    """Wait for the saves in flight and close the managers (every manager is closed even
    if a save failed; then CheckpointSaveError is raised). Idempotent. agree: a save that
    failed on any process raises on all (multi-process; only where every process calls
    close at the same point, i.e. not on error paths)."""
    if self._closed:
      return
    self._closed = True
    _OPEN.discard(self)
    error = None
    for name in self._named_managers():
      try:
        self._settle(name, agree=agree)
      except CheckpointSaveError as e:
        error = error or e
    for manager in self._managers():
      try:
        manager.close()
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("closing checkpoints in %s: %s", manager.directory, _reason(e))
    if error is not None:
      raise error

  def close_quietly(self) -> None:
    """close(), reporting a failed save as one log line instead of raising (for error
    paths, where the error already in flight is the one to see)."""
    try:
      self.close()
    except CheckpointSaveError as e:
      logging.error("%s", e)


def write_file_atomic(path: str, text: str) -> str:
  """Write `text` to `path` so that a reader (or a rerun after a kill) sees the old file
  or the new one, never a truncated one: a temporary file, fsync, then os.replace."""
  return write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str, data: bytes) -> str:
  """`write_file_atomic` for bytes."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
  return path


def write_config(workdir: str, config) -> str:
  """Writes `config` as workdir/config.json, with conv_impl 'fastest' replaced by the
  kernels it picks here (what the run computes with; see `settle_kernels`)."""
  saved = json.loads(config.to_json_best_effort())
  if isinstance(saved.get("model"), dict):
    saved["model"] = resolved_kernels(saved["model"])
  return write_file_atomic(os.path.join(workdir, "config.json"),
                           json.dumps(saved, indent=2, sort_keys=True))


# Model keys that choose kernels, not the model (the same values to float rounding),
# with the value of a config.json written before the key existed.
KERNEL_KEYS = {"conv_impl": "auto", "fused_backward": False}


def resolved_kernels(model: dict) -> dict:
  """A copy of a model section (a dict) with conv_impl 'fastest' resolved here."""
  from crvae_jax.models import layers  # pylint: disable=g-import-not-at-top
  if model.get("conv_impl") == "fastest":
    model = dict(model, conv_impl=layers.resolve_conv_impl("fastest"))
  return model


def settle_kernels(workdir: str, config, training: bool = True) -> None:
  """Sets config.model's kernel choices (KERNEL_KEYS) for a run in `workdir`.

  A workdir that holds a config.json keeps the kernels its run started with (a log line
  says so where the config named others), so that a resumed run continues bit for bit;
  with config.train.resume_other_config the config's own are taken instead. Training
  on where those kernels cannot run ('onednn' without its library) is a ConfigError
  naming the file; reading the run (training=False: evaluate, sample) takes what runs
  here instead (`portable_kernels`). A new run takes the config's own, conv_impl
  'fastest' resolved here (on process 0, for every process). Entry points call it
  before the config checks and before building a model from `config`."""
  from crvae_jax.config_checks import ConfigError  # pylint: disable=g-import-not-at-top
  saved = read_config_json(workdir) if os.path.isdir(workdir) else None
  saved_model = saved.get("model") if isinstance(saved, dict) else None
  other_config = training and config.get("train", {}).get("resume_other_config", False)
  if isinstance(saved_model, dict) and not other_config:
    for key, before_the_key in KERNEL_KEYS.items():
      if key not in config.model:
        continue
      value = saved_model.get(key, before_the_key)
      asked = config.model[key]
      if value != asked and not (key == "conv_impl" and asked == "fastest"):
        logging.info("%s: model.%s=%r, the kernels its run started with (the config "
                     "named %r; a workdir keeps its kernels)", workdir, key, value, asked)
      config.model[key] = value
    why = _why_not_here(config.model.get("conv_impl"))
    if why and training:
      raise ConfigError(
          f"{os.path.join(workdir, 'config.json')}: its run computes with "
          f"model.conv_impl={config.model.conv_impl!r}, which cannot run here: {why}. "
          "Resume it where it can, or pass --config.train.resume_other_config=True to go "
          "on with the kernels of this machine (the same numbers to float rounding, so "
          "not bit for bit the run that was started).")
    portable_kernels(config, os.path.join(workdir, "config.json"))
  elif config.model.get("conv_impl") == "fastest":
    from crvae_jax.models import layers  # pylint: disable=g-import-not-at-top
    config.model.conv_impl = _from_process_0(layers.resolve_conv_impl("fastest"))


def _why_not_here(conv_impl) -> Optional[str]:
  """Why `conv_impl` cannot run on this machine, or None (only 'onednn' can fail)."""
  from crvae_jax.models import onednn_conv  # pylint: disable=g-import-not-at-top
  return onednn_conv.unavailable_reason() if conv_impl == "onednn" else None


def portable_kernels(config, source: str) -> None:
  """For reading a trained run (evaluation, sampling, a notebook's restore, a frozen
  Stage1): a recorded conv_impl that cannot run here ('onednn' without its library, or
  off the CPU backend) becomes what 'fastest' picks here, with a warning naming
  `source` (the same numbers to float rounding)."""
  why = _why_not_here(config.model.get("conv_impl"))
  if why:
    from crvae_jax.models import layers  # pylint: disable=g-import-not-at-top
    picked = layers.resolve_conv_impl("fastest")
    logging.warning("%s: model.conv_impl='onednn' cannot run here (%s); reading the run "
                    "with conv_impl %r instead (the same numbers to float rounding)",
                    source, why, picked)
    config.model.conv_impl = picked


def read_config_json(workdir: str) -> Optional[dict]:
  """The config a run wrote into `workdir`, or None; ValueError naming the file if it
  is damaged."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      saved = json.load(f)
  except (ValueError, UnicodeDecodeError) as e:
    raise ConfigJsonDamagedError(
        f"{path} is damaged ({type(e).__name__}: {e}); it records the run's config. "
        "Restore it from a copy, or delete it: the workdir's checkpoints are then no "
        "longer checked against --config (and are resumed only if their shapes fit)."
    ) from None
  if not isinstance(saved, dict):
    raise ConfigJsonDamagedError(f"{path} is damaged: expected a JSON object, found "
                     f"{type(saved).__name__}")
  return saved


# Sections that define what a checkpoint *is*; train/eval/sample settings may change
# between runs on one workdir (e.g. more epochs).
IDENTITY_SECTIONS = ("dataset", "model", "objective")
# Data keys that define what a run learns from, with the value a workdir saved before
# the key existed had.
DATA_IDENTITY_KEYS = {"emoji_sets": "google", "emoji_split": "all", "emoji_categories": ""}
# Settings that shape the training trajectory (a run is a function of config and step):
# changed between two runs on one workdir, the resumed run would not be the run that
# was started. Whole sections, or "section.key". A key missing from an older
# config.json is not compared.
TRAJECTORY_KEYS = ("optim", "train.seed", "train.batch_size", "data.num_valid",
                   "data.source", "data.tfds_name", "data.tfds_split", "data.flip",
                   "data.random_crop", "data.load_size", "data.skip_bad_images")


def config_differences(saved: dict, config) -> list:
  """['model.width: 8 (workdir) != 16 (now)', ...] for the identity sections."""
  now = json.loads(config.to_json_best_effort())
  diffs = []
  for section in IDENTITY_SECTIONS:
    a, b = saved.get(section), now.get(section)
    if isinstance(a, dict) and isinstance(b, dict):
      if section == "model":
        # (a config.json written before a kernel key existed compares as its value)
        a = {**{k: v for k, v in KERNEL_KEYS.items() if k in b}, **a}
        a, b = resolved_kernels(a), resolved_kernels(b)
      for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
          diffs.append(f"{section}.{key}: {a.get(key)!r} (workdir) != {b.get(key)!r} (now)")
    elif a != b:
      diffs.append(f"{section}: {a!r} (workdir) != {b!r} (now)")
  # Which emoji a Stage1/Stage2 run trains on; workdirs written before these keys
  # existed trained on every Noto image (google, all).
  for key, before_the_key in DATA_IDENTITY_KEYS.items():
    if now.get("data", {}).get("source") != "emoji":
      break
    a = saved.get("data", {}).get(key, before_the_key if "data" in saved else None)
    b = now.get("data", {}).get(key)
    if b is not None and a != b:
      diffs.append(f"data.{key}: {a!r} (workdir) != {b!r} (now)")
  for name in TRAJECTORY_KEYS:
    section, _, key = name.partition(".")
    a, b = saved.get(section), now.get(section)
    if not (isinstance(a, dict) and isinstance(b, dict)):
      continue
    for k in ([key] if key else sorted(set(a) & set(b))):
      if k in a and k in b and a[k] != b[k]:
        diffs.append(f"{section}.{k}: {a[k]!r} (workdir) != {b[k]!r} (now)")
  return sorted(diffs)


def refuse_other_config(workdir: str, config) -> None:
  """Raise ConfigError if `workdir` holds a run whose identity (dataset, model,
  objective) or trajectory settings (TRAJECTORY_KEYS) differ. With
  config.train.resume_other_config the run goes on, and config.json is replaced by the
  new config (the old one kept as config.previous.json)."""
  from crvae_jax.config_checks import ConfigError  # pylint: disable=g-import-not-at-top
  saved = read_config_json(workdir)
  diffs = [] if saved is None else config_differences(saved, config)
  if diffs and not config.train.resume_other_config:
    raise ConfigError(
        f"{workdir} holds a run of another config; refusing to resume it:\n  "
        + "\n  ".join(diffs) + "\nUse a new --workdir, or pass "
        "--config.train.resume_other_config=True to resume anyway.")
  if diffs and jax.process_index() == 0:
    # Resumed under another config on purpose: config.json describes what the
    # checkpoints written from now on hold; the old one is kept beside it.
    os.replace(os.path.join(workdir, "config.json"),
               os.path.join(workdir, "config.previous.json"))
    write_config(workdir, config)
