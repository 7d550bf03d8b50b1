"""Reconstruction error of Stage1 models on held-out images, with standard errors.

x^ = decode(mean of q(z | x)): the generation path with BatchNorm's running averages,
as in the reconstruction grids, so every image is reconstructed on its own. Per image,
with images mapped from [-1, 1] to [0, 1] (`image_metrics.to_unit`):

  MSE = mean over pixels and channels of (x^ - x)^2,   PSNR = 10 log10(1 / MSE) dB.

Over N images: the mean and its standard error, and paired differences between models on
the same images (`crvae_jax.stats`).
"""

import functools
from typing import Mapping

import jax
import numpy as np

from crvae_jax import image_metrics, stats


@functools.lru_cache(maxsize=16)
def make_reconstruct_fn(model):
  """Jitted `fn(variables, x [B, 64, 64, 3]) -> x^ [B, 64, 64, 3]` (posterior mean); one
  per model (modules are hashable), so repeated calls reuse its compilations."""
  return jax.jit(lambda v, x: model.apply(
      v, model.apply(v, x, method=model.encode).mean, method=model.decode))


def reconstruction_errors(model, variables, images: np.ndarray, *, batch_size: int = 64,
                          ) -> dict:
  """{'mse': [N], 'psnr': [N]} of `model` (generator variables {'params',
  'batch_stats'}) on images [N, 64, 64, 3] in [-1, 1], in batches of min(batch_size, N)
  (the last one padded, so one compilation)."""
  fn = make_reconstruct_fn(model)
  images = np.asarray(images, np.float32)
  batch_size = min(batch_size, len(images))
  outputs = []
  for lo in range(0, len(images), batch_size):
    batch = images[lo:lo + batch_size]
    real = len(batch)
    if real < batch_size:
      batch = np.concatenate([batch, np.zeros((batch_size - real,) + batch.shape[1:],
                                              batch.dtype)])
    outputs.append(np.asarray(fn(variables, batch))[:real])
  x_hat = np.concatenate(outputs)  # [N, 64, 64, 3]
  mse = np.square(image_metrics.to_unit(x_hat) - image_metrics.to_unit(images)).mean(
      (1, 2, 3))  # [N]
  psnr = image_metrics.masked_psnr(images, x_hat, np.ones(images.shape[:3] + (1,)))
  return {"mse": mse, "psnr": psnr}


def compare_models(models: Mapping[str, tuple], images: np.ndarray, *,
                   batch_size: int = 64) -> dict:
  """Reconstruction errors of each {label: (model, generator variables)} on the same
  images [N, 64, 64, 3], as a JSON-ready dict: per label the mean and SE of MSE and
  PSNR (and the per-image values), and for every later label its paired difference
  from the first (label minus first)."""
  labels = list(models)
  errors = {label: reconstruction_errors(model, variables, images, batch_size=batch_size)
            for label, (model, variables) in models.items()}
  summary = {"num_images": int(len(images)), "models": {}, "paired": {}}
  for label in labels:
    entry = {}
    for metric in ("mse", "psnr"):
      entry[metric], entry[f"{metric}_se"] = stats.mean_and_stderr(errors[label][metric])
      entry[f"{metric}_per_image"] = errors[label][metric].tolist()
    summary["models"][label] = entry
  for label in labels[1:]:
    entry = {}
    for metric in ("mse", "psnr"):
      entry[metric], entry[f"{metric}_se"] = stats.paired_difference(errors[label][metric],
                                                               errors[labels[0]][metric])
    summary["paired"][f"{label} - {labels[0]}"] = entry
  return summary
