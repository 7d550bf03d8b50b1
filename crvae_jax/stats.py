"""Means over images with their standard errors: the one home for this arithmetic.

Every per-image figure the project reports (NLL, PSNR, MSE, estimator gaps) is a mean over
N images with its standard error std(ddof=1) / sqrt(N). Two models scored on the same
images are compared by the mean of their per-image differences and its standard error (a
paired comparison: how hard each image is cancels out, so the SE is far smaller than that
of either mean).
"""

import math
from typing import Sequence

import numpy as np


def mean_and_stderr(values: Sequence[float]) -> tuple:
  """(mean, standard error of the mean) of per-image values [N]; the SE is nan for N=1."""
  values = np.asarray(values, np.float64)
  if values.ndim != 1 or len(values) == 0:
    raise ValueError(f"expected per-image values [N], N >= 1, got shape {values.shape}")
  se = values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else math.nan
  return float(values.mean()), float(se)


def paired_difference(a: Sequence[float], b: Sequence[float]) -> tuple:
  """(mean, SE) of a - b over the same images, e.g. crVAE's NLL minus the VAE's."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape:
    raise ValueError(f"a paired comparison needs the same images: {a.shape} != {b.shape}")
  return mean_and_stderr(a - b)
