"""RGB training images for the 64x64 Stage1 models: sources, augmentation, batches.

Sources (``data.source`` in the config):

- ``tfds``: a tensorflow-datasets dataset the user has prepared (``caltech_birds2011``,
  ``celeb_a``, ``lsun/bedroom``), read with random access (``tfds.data_source``), so it
  must be prepared in the ``array_record`` format; nothing is downloaded.
- ``folder``: any folder of JPEG/PNG images (``ImageFolder``), e.g. CelebA's
  ``img_align_celeba/``.
- ``emoji``: the emoji image sets of the npm registry (``emoji.load_emoji_split``:
  ``data.emoji_sets``, e.g. 'google,twitter', ``data.emoji_split``, 'train',
  'heldout' or 'all', and ``data.emoji_categories``, e.g. 'Smileys & Emotion'), the
  offline default of the CPU demo and the tests.

Every source gives square RGB images in [-1, 1] at ``data.load_size`` (centre crop and
bicubic resize). ``augment`` then takes a random ``IMAGE_SIZE`` crop (when
``data.random_crop``) and random horizontal flips (``data.flip``). Augmentation draws from
``np.random.default_rng([seed, step])``: like the batch order it is a function of the
step, so a resumed run sees the same images as an uninterrupted one. Decoding and
augmentation run on worker threads (``RandomAccessImages.prefetch``).
"""

from __future__ import annotations

import threading
from typing import Iterator, Optional

import numpy as np
from PIL import Image

from .emoji import load_emoji_split
from .idx import DataError
from .image_folder import ImageFolder
from .image_source import ArrayImages, RandomAccessImages, fit_square
from .mnist import TrainOrder

IMAGE_SIZE = 64
RGB_SOURCES = ("tfds", "folder", "emoji")


class RgbDataError(DataError):
    """An RGB dataset cannot be opened (missing, not prepared, wrong images)."""


class TfdsImages(RandomAccessImages):
    """The ``image`` feature of a prepared tensorflow-datasets split."""

    def __init__(self, name: str, split: str, data_dir: str | None, image_size: int,
                 num_workers: int = 8):
        try:
            import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
        except ImportError as e:
            raise RgbDataError("data.source='tfds' needs tensorflow-datasets "
                               "(pip install tensorflow-datasets)") from e
        where = data_dir or "tfds's default data_dir (~/tensorflow_datasets)"
        try:
            self.dataset = tfds.data_source(name, split=split, data_dir=data_dir or None,
                                            download=False)
        except Exception as e:  # pylint: disable=broad-except
            raise RgbDataError(
                f"tensorflow-datasets dataset {name!r} (split {split!r}) cannot be opened in "
                f"{where}: {type(e).__name__}: {str(e)[:300]}\nPrepare it once (with "
                f"internet) as array_record: `tfds build {name} --file_format=array_record`"
                " (set --config.data.tfds_data_dir if it lives elsewhere), or use "
                "--config.data.source=folder --config.data.image_dir=/path/to/images."
            ) from e
        self.name, self.image_size, self.num_workers = name, image_size, num_workers
        self._lock = threading.Lock()  # one reader; decoding below runs in parallel
        if len(self.dataset) == 0:
            raise RgbDataError(f"tfds dataset {name!r} split {split!r} is empty")

    def __len__(self) -> int:
        return len(self.dataset)

    def decode(self, index: int) -> np.ndarray:
        with self._lock:
            example = self.dataset[int(index)]
        if "image" not in example:
            raise RgbDataError(f"tfds dataset {self.name!r} has no 'image' feature "
                               f"(features: {sorted(example)})")
        pixels = np.asarray(example["image"])
        if pixels.ndim != 3 or pixels.shape[-1] not in (1, 3) or pixels.dtype != np.uint8:
            raise RgbDataError(f"tfds dataset {self.name!r} example {index}: image "
                               f"{pixels.shape} {pixels.dtype}, expected uint8 [H, W, 3]")
        return fit_square(Image.fromarray(pixels.squeeze(-1) if pixels.shape[-1] == 1
                                          else pixels).convert("RGB"), self.image_size)


def open_source(data_config) -> RandomAccessImages:
    """The source named by ``data_config.source`` at ``data_config.load_size``."""
    d = data_config
    if d.source == "tfds":
        return TfdsImages(d.tfds_name, d.tfds_split, d.tfds_data_dir or None, d.load_size,
                          d.num_workers)
    if d.source == "folder":
        if not d.image_dir:
            raise RgbDataError("data.source='folder' needs data.image_dir "
                               "(--config.data.image_dir=/path/to/images)")
        return ImageFolder(d.image_dir, image_size=d.load_size,
                           allow_other_files=d.allow_other_files,
                           convert_to_rgb=d.convert_to_rgb,
                           allow_upscaling=d.allow_upscaling, num_workers=d.num_workers,
                           verify_images=d.get("verify_images", False),
                           skip_bad_images=d.get("skip_bad_images", False))
    if d.source == "emoji":
        categories = d.get("emoji_categories", "")
        images = load_emoji_split(d.emoji_sets, d.emoji_split, tarballs=d.emoji_tarball,
                                  categories=categories, cache_dir=d.cache_dir or None,
                                  allow_download=d.allow_download).images
        what = (f"emoji {d.emoji_sets}, split {d.emoji_split}"
                + (f", categories {categories}" if categories else "")
                + f": {len(images)} images")
        size = images.shape[1]
        if d.load_size > size and d.get("allow_upscaling", False):
            # Stage2 demo: bicubic upscaling, so the high-res targets hold no detail the
            # 64x64 images lack (a pipeline check, not super-resolution of real detail).
            images = np.stack([np.asarray(Image.fromarray(im).resize(
                (d.load_size, d.load_size), Image.Resampling.BICUBIC)) for im in images])
            return ArrayImages(images, f"{what}, upscaled {size} -> {d.load_size}")
        if d.load_size != size:
            raise RgbDataError(f"data.load_size={d.load_size}: the emoji images are "
                               f"{size}x{size} (larger needs data.allow_upscaling=True)")
        return ArrayImages(images, what)
    raise RgbDataError(f"data.source={d.source!r}; choose one of {RGB_SOURCES}")


def augment(images: np.ndarray, rng: np.random.Generator, *, flip: bool,
            crop_size: int = IMAGE_SIZE, rows: Optional[slice] = None,
            batch_size: Optional[int] = None) -> np.ndarray:
    """images [n, L, L, 3] -> [n, crop_size, crop_size, 3]: a random crop per image when
    L > crop_size, then (flip) each image mirrored left-right with probability 1/2.

    rows, batch_size: `images` are rows `rows` of a global batch of `batch_size` (one
    process's part in a multi-process run). The draws are made for the whole global batch
    and sliced, so every row gets the crop and flip it gets in a single-process run.
    """
    n, size = images.shape[:2]
    rows = rows or slice(0, n)
    total = batch_size or n
    if len(range(total)[rows]) != n:
        raise ValueError(f"{n} images are not rows {rows} of a batch of {total}")
    if size < crop_size:
        raise ValueError(f"images of {size}x{size} cannot be cropped to {crop_size}")
    if size > crop_size:
        offsets = rng.integers(0, size - crop_size + 1, (total, 2))[rows]  # [n, (y, x)]
        images = np.stack([im[y:y + crop_size, x:x + crop_size]
                           for im, (y, x) in zip(images, offsets)])
    if flip:
        mirrored = rng.random(total)[rows] < 0.5  # [n]
        images = np.where(mirrored[:, None, None, None], images[:, :, ::-1], images)
    return np.ascontiguousarray(images, dtype=np.float32)


def training_batches(source: RandomAccessImages, order: TrainOrder, start: int, stop: int,
                     *, flip: bool, seed: int, depth: int = 2,
                     rows: Optional[slice] = None,
                     crop_size: int = IMAGE_SIZE) -> Iterator[np.ndarray]:
    """Augmented batches [B, crop_size, crop_size, 3] (Stage1: 64) for steps
    start .. stop - 1, decoded ahead.

    rows: only these rows of every batch are decoded and yielded (this process's part,
    `sharding.process_rows`, in a multi-process run); default all.
    """
    rows = rows or slice(0, order.batch_size)

    def transform(n, batch):
        return augment(batch, np.random.default_rng([seed, start + n]), flip=flip,
                       crop_size=crop_size, rows=rows, batch_size=order.batch_size)
    return source.prefetch((order.indices(s)[rows] for s in range(start, stop)),
                           depth=depth, transform=transform)
