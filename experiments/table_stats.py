"""Paired comparisons between Table 1 entries over test images and training seeds.

An entry (a model row at one setting) has one per-image test NLL array per training seed,
all over the same test images. A comparison A - B:

  mean       mean over images of (seed-mean NLL of A) - (seed-mean NLL of B);
  se_images  its standard error over the test images (the test set's sampling noise);
  se_seeds   sqrt(var_A / n_A + var_B / n_B), var_X the variance across X's seeds of its
             mean test NLL; an entry with one seed takes the pooled variance of the
             entries with several (`pooled_seed_variance`): training-seed noise;
  per_seed   the paired per-image difference on each seed both entries have.

A claim "A < B" then *holds* when mean <= -2 se, *does not hold* when mean >= 2 se and is
*within noise* otherwise, with se = max(se_seeds, se_images) (with 3 seeds the seed
spread is itself estimated from 2 degrees of freedom; the larger of the two guards
against an accidentally small one). Until some entry has two seeds, se_seeds is unknown
and se = se_images: such a verdict is *provisional*.
"""

import dataclasses
import math
from typing import Optional

import numpy as np

from crvae_jax import stats

NOISE_SE = 2.0  # |mean| < NOISE_SE * se: within noise


@dataclasses.dataclass(frozen=True)
class Comparison:
  mean: float
  se_images: float
  se_seeds: float  # nan: no seed variance known (every entry has one seed)
  seeds_a: int
  seeds_b: int
  pooled: bool  # a one-seed side used the pooled seed variance
  per_seed: dict  # seed -> (mean, se over images), on the seeds both entries have

  @property
  def se(self) -> float:
    return self.se_images if math.isnan(self.se_seeds) else max(self.se_seeds,
                                                                 self.se_images)

  @property
  def provisional(self) -> bool:
    """No training-seed variance is known yet (no entry has two seeds): the verdict
    weighs only the test images' noise."""
    return math.isnan(self.se_seeds)

  @property
  def verdict(self) -> str:
    """For the claim 'A < B' (A has the lower NLL)."""
    if abs(self.mean) < NOISE_SE * self.se or self.mean == 0:  # (identical: se 0 too)
      return "within noise"
    return "holds" if self.mean < 0 else "does not hold"


def seed_means(per_seed: dict) -> np.ndarray:
  return np.array([np.mean(v) for _, v in sorted(per_seed.items())])


def pooled_seed_variance(entries: list) -> Optional[float]:
  """Pooled variance across seeds of the mean test NLL, over the entries ({seed: [N]})
  that have at least two seeds; None if none has."""
  num = den = 0.0
  for per_seed in entries:
    m = seed_means(per_seed)
    if len(m) >= 2:
      num += (len(m) - 1) * np.var(m, ddof=1)
      den += len(m) - 1
  return num / den if den else None


def compare(a: dict, b: dict, pooled_var: Optional[float]) -> Comparison:
  """A - B for per-image NLL arrays {seed: [N]} of two entries (same test images)."""
  if not a or not b:
    raise ValueError("compare needs at least one seed on each side")
  shapes = {v.shape for v in list(a.values()) + list(b.values())}
  if len(shapes) != 1:
    raise ValueError(f"per-image arrays of different shapes {sorted(shapes)}: the "
                     "entries were scored on different test images")
  diff = np.mean(list(a.values()), axis=0) - np.mean(list(b.values()), axis=0)  # [N]
  mean, se_images = stats.mean_and_stderr(diff)
  pooled = False
  variances = []
  for side in (a, b):
    m = seed_means(side)
    if len(m) >= 2:
      variances.append(np.var(m, ddof=1) / len(m))
    elif pooled_var is not None:
      variances.append(pooled_var)
      pooled = True
    else:
      variances.append(math.nan)
  per_seed = {s: stats.mean_and_stderr(a[s] - b[s]) for s in sorted(set(a) & set(b))}
  return Comparison(mean, se_images, float(math.sqrt(sum(variances))), len(a), len(b),
                    pooled, per_seed)


def describe(c: Comparison) -> str:
  """'-1.23 nats, SE 0.20 (seeds: 3 vs 1, pooled) / 0.05 (images), 6.2 SE'."""
  seeds = f"{c.seeds_a} vs {c.seeds_b} seeds" + (", one-seed side pooled"
                                                  if c.pooled else "")
  seed_se = "n/a" if math.isnan(c.se_seeds) else f"{c.se_seeds:.2f}"
  return (f"{c.mean:+.2f} nats; SE {seed_se} across seeds ({seeds}), "
          f"{c.se_images:.2f} over images; |mean| = "
          + (f"{abs(c.mean) / c.se:.1f} SE" if c.se > 0 else "n/a (SE 0)"))
