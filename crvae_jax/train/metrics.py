"""Training metrics: a JSON-lines file (machine-readable) and TensorBoard event files."""

import json
import math
import os
from typing import Optional

import jax
import numpy as np
from absl import logging
from tensorboardX import SummaryWriter


def mean_metrics(history: list) -> dict:
  """Average a list of metric dicts of device arrays (one host transfer)."""
  stacked = jax.device_get(history)
  return {k: np.mean([m[k] for m in stacked], axis=0) for k in stacked[0]}


class MetricWriter:
  """Writes scalars to `<workdir>/metrics.jsonl` and TensorBoard events in `<workdir>/tb`.

  Array-valued metrics (e.g. kl_per_block [T]) are expanded into one scalar per entry
  (`kl_per_block/0`, ...). Non-finite values (NaN, +-inf) are written to metrics.jsonl as
  `null`, so strict JSON readers accept every line (TensorBoard keeps them as they are).
  Only process 0 should write.

  resume_step: the step a run starts from (0 for a fresh start). Records of later steps,
  left by an earlier run that went further than its last checkpoint, are dropped when the
  writer opens (the file is rewritten atomically; TensorBoard events past it are purged),
  so after a resume there is one record per (step, split). None keeps every record.
  """

  def __init__(self, workdir: str, enabled: bool = True,
               resume_step: Optional[int] = None):
    self.enabled = enabled
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "metrics.jsonl")
    if resume_step is not None and os.path.exists(path):
      _drop_records_after(path, int(resume_step))
    self._jsonl = open(path, "a", encoding="utf-8")
    self._tb = SummaryWriter(os.path.join(workdir, "tb"),
                             purge_step=None if resume_step is None else int(resume_step) + 1)

  @staticmethod
  def flatten(metrics: dict) -> dict:
    flat = {}
    for name, value in metrics.items():
      value = np.asarray(value)
      if value.ndim == 0:
        flat[name] = float(value)
      else:
        for i, v in enumerate(value.reshape(-1)):
          flat[f"{name}/{i}"] = float(v)
    return flat

  def write(self, step: int, metrics: dict, prefix: str = "train") -> dict:
    flat = self.flatten(metrics)
    if self.enabled:
      record = {"step": int(step), "split": prefix,
                **{k: v if math.isfinite(v) else None for k, v in flat.items()}}
      self._jsonl.write(json.dumps(record, allow_nan=False) + "\n")
      self._jsonl.flush()
      for name, value in flat.items():
        self._tb.add_scalar(f"{prefix}/{name}", value, int(step))
    return flat

  def close(self):
    if self.enabled:
      self._jsonl.close()
      self._tb.close()


def _drop_records_after(path: str, step: int) -> None:
  """Rewrite metrics.jsonl (atomically) without the records of steps > `step` and without
  lines that do not parse (a write cut short by a kill)."""
  with open(path, encoding="utf-8") as f:
    lines = f.readlines()
  kept, dropped, broken = [], 0, 0
  for line in lines:
    try:
      record_step = int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
      broken += 1
      continue
    if record_step > step:
      dropped += 1
    else:
      kept.append(line if line.endswith("\n") else line + "\n")
  if not dropped and not broken:
    return
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.writelines(kept)
  os.replace(tmp, path)
  logging.info("%s: dropped %d record(s) of steps after %d (retrained now) and %d "
               "unreadable line(s)", path, dropped, step, broken)
