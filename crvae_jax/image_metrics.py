"""PSNR and SSIM over a region of each image (the hidden pixels of a completion).

Images are [N, H, W, C] in [-1, 1] (the models' range) and are mapped to [0, 1] (data
range 1) before scoring; `region` [N, H, W, 1] is 1 on the pixels that count. Both
metrics are per image ([N]); average them over images yourself.

- PSNR = 10 log10(1 / MSE), the MSE over the region's pixels and all channels
  (inf when the region is reproduced exactly).
- SSIM (Wang et al. 2004): Gaussian window 11 x 11, sigma 1.5, K1 = 0.01, K2 = 0.03,
  per channel, population (not sample) statistics, as in the paper's reference code.
  The SSIM map is computed on the whole image (borders padded by mirroring, scipy's
  'reflect'), then averaged over the region's pixels and the channels, so a hidden
  pixel's score also sees the visible pixels around it, as a viewer does.
"""

import numpy as np

K1, K2 = 0.01, 0.03
WINDOW, SIGMA = 11, 1.5


def to_unit(images) -> np.ndarray:
  """[-1, 1] -> [0, 1] (clipped), float64."""
  return np.clip((np.asarray(images, np.float64) + 1.0) / 2.0, 0.0, 1.0)


def _check(reference, estimate, region):
  reference, estimate = to_unit(reference), to_unit(estimate)
  region = np.asarray(region, np.float64)
  if reference.shape != estimate.shape or reference.ndim != 4:
    raise ValueError(f"expected two [N, H, W, C] image batches of one shape, got "
                     f"{reference.shape} and {estimate.shape}")
  if region.shape != reference.shape[:3] + (1,):
    raise ValueError(f"region must be [N, H, W, 1] = {reference.shape[:3] + (1,)}, got "
                     f"{region.shape}")
  pixels = region.sum((1, 2, 3))  # [N]
  if np.any(pixels == 0):
    raise ValueError(f"images {np.flatnonzero(pixels == 0).tolist()} have an empty region: "
                     "nothing to score")
  return reference, estimate, region, pixels


def masked_psnr(reference, estimate, region) -> np.ndarray:
  """PSNR in dB [N] of `estimate` against `reference` over `region` (1 = scored)."""
  reference, estimate, region, pixels = _check(reference, estimate, region)
  channels = reference.shape[-1]
  mse = (np.square(estimate - reference) * region).sum((1, 2, 3)) / (pixels * channels)
  with np.errstate(divide="ignore"):
    return 10.0 * np.log10(1.0 / mse)


def gaussian_window(size: int = WINDOW, sigma: float = SIGMA) -> np.ndarray:
  """Normalised 1-D Gaussian [size]."""
  k = np.arange(size) - (size - 1) / 2.0
  g = np.exp(-k ** 2 / (2.0 * sigma ** 2))
  return g / g.sum()


def _blur(x: np.ndarray) -> np.ndarray:
  """Separable Gaussian filter of x [N, H, W, C] with mirrored borders (same size)."""
  g = gaussian_window()
  r = len(g) // 2
  _, h, w, _ = x.shape
  x = np.pad(x, ((0, 0), (r, r), (r, r), (0, 0)), mode="symmetric")  # [N, H+2r, W+2r, C]
  x = sum(g[i] * x[:, i:i + h] for i in range(len(g)))  # [N, H, W+2r, C]
  return sum(g[j] * x[:, :, j:j + w] for j in range(len(g)))  # [N, H, W, C]


def local_moments(x: np.ndarray) -> tuple:
  """(mean, variance) in the Gaussian window at every pixel of x [N, H, W, C] in [0, 1]."""
  mu = _blur(x)
  return mu, _blur(x * x) - mu ** 2


def ssim_from_moments(mu_x, var_x, mu_y, var_y, cov) -> np.ndarray:
  """SSIM from the local means, variances and covariance of two images (data range 1)."""
  c1, c2 = K1 ** 2, K2 ** 2
  return (((2 * mu_x * mu_y + c1) * (2 * cov + c2))
          / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2)))


def ssim_map(reference, estimate) -> np.ndarray:
  """SSIM at every pixel and channel [N, H, W, C] of two [N, H, W, C] batches in [0, 1]."""
  (mu_x, var_x), (mu_y, var_y) = local_moments(reference), local_moments(estimate)
  cov = _blur(reference * estimate) - mu_x * mu_y
  return ssim_from_moments(mu_x, var_x, mu_y, var_y, cov)


def most_similar(images, references) -> tuple:
  """(ssim [N], index [N]): for each image [N, H, W, C] in [-1, 1], the mean SSIM (over
  pixels and channels, as masked_ssim over the whole image) with its most similar
  reference image [M, H, W, C], and that image's index. The references' window moments
  are computed once; each image costs one blur of [M, H, W, C]."""
  images, references = to_unit(images), to_unit(references)
  if images.ndim != 4 or images.shape[1:] != references.shape[1:]:
    raise ValueError(f"expected [N, H, W, C] images and references of one image shape, "
                     f"got {images.shape} and {references.shape}")
  mu_r, var_r = local_moments(references)  # [M, H, W, C] each
  best, index = np.empty(len(images)), np.empty(len(images), np.int64)
  for i, x in enumerate(images):
    (mu_x, var_x), x = local_moments(x[None]), x[None]  # [1, H, W, C]
    cov = _blur(x * references) - mu_x * mu_r  # [M, H, W, C]
    score = ssim_from_moments(mu_x, var_x, mu_r, var_r, cov).mean((1, 2, 3))  # [M]
    index[i] = score.argmax()
    best[i] = score[index[i]]
  return best, index


def masked_ssim(reference, estimate, region) -> np.ndarray:
  """Mean SSIM [N] over `region` (1 = scored) and the channels."""
  reference, estimate, region, pixels = _check(reference, estimate, region)
  channels = reference.shape[-1]
  return (ssim_map(reference, estimate) * region).sum((1, 2, 3)) / (pixels * channels)
