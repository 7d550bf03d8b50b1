"""Orbax checkpoints: the latest training state, and the best state by validation ELBO.

<workdir>/checkpoints/<step>/  full TrainState (params, batch_stats, opt_state, step),
                                the last `keep` saves.
<workdir>/best/<step>/          the state with the highest validation ELBO so far
                                (Orbax keeps the best one by its recorded metric).
<workdir>/config.json           the run's config, written when the run starts.
"""

import json
import os
import warnings
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

BEST_METRIC = "valid_elbo"


class CheckpointMismatchError(ValueError):
  """The checkpoint's arrays do not match the model's (paths and shapes are named)."""


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
  try:
    metadata = ocp.StandardCheckpointer().metadata(os.path.join(step_dir, "default"))
    saved_tree = getattr(metadata, "item_metadata", metadata)
  except Exception:  # pylint: disable=broad-except
    return []
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


class Checkpoints:
  """The run's two Orbax `CheckpointManager`s (latest and best; `best=False`: latest
  only, for runs without a validation metric such as the GANs)."""

  def __init__(self, workdir: str, keep: int = 2, best: bool = True):
    workdir = os.path.abspath(workdir)
    self.latest = ocp.CheckpointManager(
        os.path.join(workdir, "checkpoints"),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))
    self.best = None if not best else ocp.CheckpointManager(
        os.path.join(workdir, "best"),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=1, create=True, best_fn=lambda m: m[BEST_METRIC],
            best_mode="max", keep_checkpoints_without_metrics=False))

  def _before_save(self) -> None:
    # In a multi-process run each manager finalizes a save with barriers named the same
    # in both managers; two saves in flight at once collide ("Barrier ... is already
    # ongoing"). One save at a time there; on one process saves overlap with training.
    if jax.process_count() > 1:
      self.wait()

  def save_latest(self, step: int, state) -> None:
    self._before_save()
    self.latest.save(int(step), args=ocp.args.StandardSave(state), force=True)

  def save_now(self, step: int, state, last_saved: Optional[int]) -> None:
    """Save `state` as step `step` unless `last_saved` is that step, and wait until it is
    on disk (before the process exits)."""
    if last_saved != step:
      self.save_latest(step, state)
    self.wait()

  def best_value(self) -> Optional[float]:
    """The validation ELBO of the kept best checkpoint, or None."""
    step = self.best.best_step()
    metrics = None if step is None else self.best.metrics(step)
    return None if not metrics else float(metrics[BEST_METRIC])

  def save_best_if_better(self, step: int, state, valid_elbo: float) -> bool:
    best = self.best_value()
    if best is not None and valid_elbo <= best:
      return False
    self._before_save()
    self.best.save(int(step), args=ocp.args.StandardSave(state),
                   metrics={BEST_METRIC: float(valid_elbo)}, force=True)
    return True

  def restore(self, target: Any, which: str = "latest", step: Optional[int] = None):
    """Restore into the structure of `target` (arrays or ShapeDtypeStructs).

    which: 'latest' (newest training state) or 'best' (best validation ELBO).
    Returns (state, step) or (None, None) when there is no checkpoint. A checkpoint that
    cannot be read (e.g. damaged on disk) is skipped with a warning and the previous one
    is used; one whose arrays do not fit `target` raises CheckpointMismatchError naming
    the parameter paths and shapes. (A save killed half-way never becomes a step:
    Orbax writes to a temporary directory and renames it when complete.)
    """
    manager = {"latest": self.latest, "best": self.best}.get(which)
    if which == "best" and manager is None:
      raise ValueError("this run keeps no best checkpoint (no validation metric)")
    if manager is None:
      raise ValueError(f"checkpoint must be 'latest' or 'best', got {which!r}")
    if step is not None:
      candidates = [step]
    elif which == "best":
      candidates = [] if manager.best_step() is None else [manager.best_step()]
    else:
      candidates = sorted(manager.all_steps(), reverse=True)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    for s in candidates:
      step_dir = os.path.join(str(manager.directory), str(s))
      try:
        return manager.restore(s, args=ocp.args.StandardRestore(abstract)), s
      except Exception as e:  # pylint: disable=broad-except
        diffs = shape_differences(step_dir, target)
        if diffs:
          raise CheckpointMismatchError(
              f"checkpoint {step_dir} does not fit this model ({len(diffs)} "
              "difference(s)); was it written with another config?\n  "
              + "\n  ".join(diffs[:20])) from e
        warnings.warn(f"checkpoint {step_dir} cannot be restored ({type(e).__name__}: "
                      f"{str(e)[:200]}); skipping it", RuntimeWarning)
    return None, None

  def _managers(self):
    return [m for m in (self.latest, self.best) if m is not None]

  def wait(self) -> None:
    for m in self._managers():
      m.wait_until_finished()

  def close(self) -> None:
    for m in self._managers():
      m.close()


def write_config(workdir: str, config) -> str:
  path = os.path.join(workdir, "config.json")
  os.makedirs(workdir, exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  return path


def read_config_json(workdir: str) -> Optional[dict]:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


# Sections that define what a checkpoint *is*; train/eval/sample settings may change
# between runs on one workdir (e.g. more epochs).
IDENTITY_SECTIONS = ("dataset", "model", "objective")


def config_differences(saved: dict, config) -> list:
  """['model.width: 8 (workdir) != 16 (now)', ...] for the identity sections."""
  now = json.loads(config.to_json_best_effort())
  diffs = []
  for section in IDENTITY_SECTIONS:
    a, b = saved.get(section), now.get(section)
    if isinstance(a, dict) and isinstance(b, dict):
      for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
          diffs.append(f"{section}.{key}: {a.get(key)!r} (workdir) != {b.get(key)!r} (now)")
    elif a != b:
      diffs.append(f"{section}: {a!r} (workdir) != {b!r} (now)")
  return sorted(diffs, key=lambda d: not d.startswith("params/"))  # parameters first


def refuse_other_config(workdir: str, config) -> None:
  """Raise ConfigError if `workdir` holds a run whose dataset/model/objective differ
  (unless config.train.resume_other_config)."""
  from crvae_jax.config_checks import ConfigError  # pylint: disable=g-import-not-at-top
  saved = read_config_json(workdir)
  diffs = [] if saved is None else config_differences(saved, config)
  if diffs and not config.train.resume_other_config:
    raise ConfigError(
        f"{workdir} holds a run of another config; refusing to resume it:\n  "
        + "\n  ".join(diffs) + "\nUse a new --workdir, or pass "
        "--config.train.resume_other_config=True to resume anyway.")
