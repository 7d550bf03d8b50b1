"""Image grids written as PNG files (samples, reconstructions)."""

import math
import os

import numpy as np
from PIL import Image

from crvae_jax import distributed


def make_grid(images: np.ndarray, num_cols: int | None = None, pad: int = 2,
              pad_value: float = 0.5) -> np.ndarray:
  """[N, H, W] or [N, H, W, C] in [0, 1] -> one [rows*(H+pad)+pad, ..., C] uint8 image."""
  images = np.asarray(images, np.float32)
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4:
    raise ValueError(f"expected images [N, H, W(, C)], got shape {images.shape}")
  n, h, w, c = images.shape
  cols = num_cols or math.ceil(math.sqrt(n))
  rows = math.ceil(n / cols)
  grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), pad_value,
                 np.float32)
  for i in range(n):
    r, q = divmod(i, cols)
    grid[pad + r * (h + pad):pad + r * (h + pad) + h,
         pad + q * (w + pad):pad + q * (w + pad) + w] = images[i]
  return (np.clip(grid, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def save_grid(path: str, images: np.ndarray, num_cols: int | None = None,
              scale: int = 2) -> str:
  """Write a grid PNG (nearest-neighbour upscaled by `scale` for visibility).

  In a multi-process run only process 0 writes; every process gets the path back.
  """
  if not distributed.is_main():
    return path
  grid = make_grid(images, num_cols)
  if scale > 1:
    grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
  if grid.shape[-1] == 1:
    grid = grid[..., 0]
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  Image.fromarray(grid).save(path)
  return path


def interleave_pairs(originals: np.ndarray, reconstructions: np.ndarray) -> np.ndarray:
  """[N, ...] x2 -> [2N, ...] alternating original, reconstruction (pairs side by side)."""
  out = np.empty((2 * len(originals),) + originals.shape[1:], np.float32)
  out[0::2], out[1::2] = originals, reconstructions
  return out
