"""Training metrics: a JSON-lines file (machine-readable) and TensorBoard event files."""

import json
import os

import jax
import numpy as np
from tensorboardX import SummaryWriter


def mean_metrics(history: list) -> dict:
  """Average a list of metric dicts of device arrays (one host transfer)."""
  stacked = jax.device_get(history)
  return {k: np.mean([m[k] for m in stacked], axis=0) for k in stacked[0]}


class MetricWriter:
  """Writes scalars to `<workdir>/metrics.jsonl` and TensorBoard events in `<workdir>/tb`.

  Array-valued metrics (e.g. kl_per_block [T]) are expanded into one scalar per entry
  (`kl_per_block/0`, ...). Only process 0 should write.
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
    self._tb = SummaryWriter(os.path.join(workdir, "tb"))

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
      self._jsonl.write(json.dumps({"step": int(step), "split": prefix, **flat}) + "\n")
      self._jsonl.flush()
      for name, value in flat.items():
        self._tb.add_scalar(f"{prefix}/{name}", value, int(step))
    return flat

  def close(self):
    if self.enabled:
      self._jsonl.close()
      self._tb.close()
