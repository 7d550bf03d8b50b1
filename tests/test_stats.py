"""Means over images with standard errors, and paired differences (crvae_jax.stats)."""

import math

import numpy as np
import pytest

from crvae_jax import stats


def test_mean_and_stderr():
  mean, se = stats.mean_and_stderr([1.0, 2.0, 3.0, 4.0])
  assert mean == 2.5 and se == pytest.approx(np.std([1, 2, 3, 4], ddof=1) / 2)
  mean, se = stats.mean_and_stderr(np.array([7.0]))
  assert mean == 7.0 and math.isnan(se)  # one image: no spread to estimate


@pytest.mark.parametrize("bad", [[], [[1.0, 2.0]]])
def test_mean_and_stderr_names_the_shape(bad):
  with pytest.raises(ValueError, match="per-image values"):
    stats.mean_and_stderr(bad)


def test_paired_difference():
  mean, se = stats.paired_difference([1.0, 2.0, 3.0], [0.0, 2.0, 1.0])
  assert mean == 1.0 and se == pytest.approx(1 / np.sqrt(3))  # differences 1, 0, 2
  with pytest.raises(ValueError, match="same images"):
    stats.paired_difference([1.0, 2.0], [1.0])
