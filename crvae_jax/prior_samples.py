"""How much a Stage1 model's prior samples look like real images.

For each prior sample x = decode(z), z ~ N(0, I) (BatchNorm's running averages, as in
the prior grids), its SSIM with the most similar image of a reference set (the training
images; `image_metrics.most_similar`: mean SSIM over pixels and channels, 11x11
Gaussian windows). The same score of held-out real images, which no model has seen, is
the scale: a sample at or above the held-out images' median is as similar to some
training image as a typical real, unseen image is. SSIM compares local structure
(edges, eyes, mouths), so a blob of colour scores low against every training image;
pixel MSE separated them less well in a first look at the emoji VAE-GAN pilot (2026-12-06:
its samples' mean distance to the nearest training image was about that of the held-out
images, while their SSIM was clearly lower; results/pilots/). A copy of a training image
scores highest of all, so a high score alone does not mean a good model: `pairs` shows
each sample beside its most similar training image, to look at.

Every model decodes the same z (one seed), so per-sample differences between models of
one latent shape are paired, as `crvae_jax.stats.paired_difference` expects.

Cost: one Gaussian blur of the whole reference set per sample (numpy, float64): about
0.15 s per sample against 300 references of 64x64x3 on one core of this project's CPU.
"""

from typing import Mapping

import jax
import numpy as np

from crvae_jax import image_metrics, images
from crvae_jax.families import stage1


def draw(model, variables, num: int, seed: int) -> np.ndarray:
  """`num` prior samples [num, H, W, 3] in [-1, 1] of `model` (generator variables
  {'params', 'batch_stats'}); z from `seed`, so every model of one latent shape decodes
  the same z."""
  prior_fn, _ = stage1.grid_fns(model)
  eps = jax.random.normal(jax.random.key(seed), (num,) + tuple(model.latent_shape))
  return np.asarray(prior_fn(variables, eps))


def score(models: Mapping[str, tuple], references: np.ndarray, held_out: np.ndarray, *,
          num_samples: int, seed: int) -> tuple:
  """(record, samples): the best SSIM against `references` of `num_samples` prior
  samples of each {label: (model, generator variables)} and of the `held_out` images, as
  a JSON-ready dict, and {label: (samples [S, H, W, 3], index of each one's most similar
  reference [S])} for `pairs`."""
  held, _ = image_metrics.most_similar(held_out, references)
  record = {"num_samples": num_samples, "seed": seed, "num_references": len(references),
            "held_out": {"num_images": len(held_out), "ssim_per_image": held.tolist()},
            "models": {}}
  samples = {}
  for label, (model, variables) in models.items():
    x = draw(model, variables, num_samples, seed)
    ssim, index = image_metrics.most_similar(x, references)
    record["models"][label] = {"ssim_per_sample": ssim.tolist()}
    samples[label] = (x, index)
  return record, samples


def pairs(samples: Mapping[str, tuple], references: np.ndarray, num: int) -> np.ndarray:
  """Images [R * 2 * num, H, W, 3] in [0, 1] for a grid of 2 * num columns: per label (a
  row) its first `num` samples, each followed by its most similar reference image."""
  rows = [images.interleave_pairs(image_metrics.to_unit(x[:num]),
                                  image_metrics.to_unit(references[index[:num]]))
          for x, index in samples.values()]
  return np.concatenate(rows).astype(np.float32)
