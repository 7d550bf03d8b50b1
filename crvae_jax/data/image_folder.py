"""Any folder of JPEG/PNG images as square RGB training data in [-1, 1].

The common case is a user's unpacked CelebA ``img_align_celeba/``::

    folder = ImageFolder("~/data/img_align_celeba", image_size=64)  # scans headers
    batch = folder.load(np.arange(128))   # [128, 64, 64, 3] float32 in [-1, 1]
    for batch in folder.prefetch(index_batches):  # decoded on worker threads
        ...

Images are centre-cropped to a square and resized (bicubic) to ``image_size``.
The folder is walked recursively in sorted order, so index i is the same file on
every machine. Bad input raises ``ImageFolderError`` naming the file:

- the folder is missing, or holds no JPEG/PNG;
- a file that is not a JPEG/PNG (say ``list_attr.txt``) -- unless
  ``allow_other_files``: then it is skipped and the skipped files are counted in
  the log;
- a file that cannot be decoded (corrupt or truncated);
- an image that is not 3-channel RGB (grayscale, RGBA, palette, CMYK) -- unless
  ``convert_to_rgb``;
- an image smaller than ``image_size`` on a side (it would be upscaled) -- unless
  ``allow_upscaling``.

The scan reads headers only, so a file cut short after a valid header (a truncated
download) is found when its batch is decoded, mid-training. ``verify_images`` decodes
every file once at the start (all worker threads; roughly a minute per 200,000 CelebA
images on 8 cores) and names every file that fails; with ``skip_bad_images`` those files
are left out instead (their number and names are logged) and the run goes on with the
rest. Skipping changes the index -> file map, so a workdir must keep one setting.
"""

from __future__ import annotations

import concurrent.futures
import os
from pathlib import Path

from absl import logging
import numpy as np
from PIL import Image

from .idx import DataError
from .image_source import RandomAccessImages, fit_square

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
_ALLOWED_FORMATS = {"JPEG", "PNG", "MPO"}  # MPO: multi-picture JPEG from some cameras
_SHOWN = 5  # offending files named in one message


class ImageFolderError(DataError):
    """A folder of images is missing, empty, or holds a file that cannot be used."""


def _names(paths: list) -> str:
    shown = ", ".join(str(p) for p in paths[:_SHOWN])
    return shown + (f" and {len(paths) - _SHOWN} more" if len(paths) > _SHOWN else "")


class ImageFolder(RandomAccessImages):
    """The images under ``directory``; see the module docstring for what is checked."""

    def __init__(self, directory: str | os.PathLike, *, image_size: int = 64,
                 allow_other_files: bool = False, convert_to_rgb: bool = False,
                 allow_upscaling: bool = False, num_workers: int = 8,
                 verify_images: bool = False, skip_bad_images: bool = False):
        self.directory = Path(directory).expanduser()
        self.image_size = image_size
        self.convert_to_rgb = convert_to_rgb
        self.num_workers = num_workers
        if not self.directory.is_dir():
            raise ImageFolderError(
                f"{self.directory}: image folder not found (or not a directory); point the "
                "config's data.image_dir at a folder of JPEG/PNG files.")
        files = sorted(p for p in self.directory.rglob("*") if p.is_file())
        images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
        others = [p for p in files if p.suffix.lower() not in IMAGE_EXTENSIONS]
        if others and not allow_other_files:
            raise ImageFolderError(
                f"{self.directory}: {len(others)} file(s) that are not JPEG/PNG images: "
                f"{_names(others)}. Move them out, or set allow_other_files (data."
                "allow_other_files=True) to skip them.")
        if not images:
            raise ImageFolderError(
                f"{self.directory}: no JPEG/PNG images ({', '.join(IMAGE_EXTENSIONS)}) found.")
        if others:
            logging.warning(f"{self.directory}: skipping {len(others)} non-image "
                            f"file(s): {_names(others)}")
        with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
            headers = list(pool.map(self._header, images))
        self._check_headers(images, headers, allow_upscaling)
        self.paths = images
        if skip_bad_images and not verify_images:
            raise ValueError("skip_bad_images needs verify_images (data.verify_images=True)")
        if verify_images:
            self._verify(skip_bad_images)
        logging.info(f"{self.directory}: {len(images)} images -> {image_size}x{image_size} RGB")

    @staticmethod
    def _header(path: Path):
        """(format, mode, size) from the file's header, or the exception it raised."""
        try:
            with Image.open(path) as im:
                return im.format, im.mode, im.size
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            return e

    def _check_headers(self, paths, headers, allow_upscaling: bool) -> None:
        unreadable = [(p, h) for p, h in zip(paths, headers) if isinstance(h, Exception)]
        if unreadable:
            p, e = unreadable[0]
            raise ImageFolderError(
                f"{p}: not a readable image ({type(e).__name__}: {e}); "
                f"{len(unreadable)} such file(s): {_names([q for q, _ in unreadable])}. "
                "Delete or replace them.")
        wrong_format = [(p, h[0]) for p, h in zip(paths, headers) if h[0] not in _ALLOWED_FORMATS]
        if wrong_format:
            p, fmt = wrong_format[0]
            raise ImageFolderError(
                f"{p}: is a {fmt} file despite its name; only JPEG and PNG are read "
                f"({len(wrong_format)} such file(s): {_names([q for q, _ in wrong_format])}).")
        if not self.convert_to_rgb:
            not_rgb = [(p, h[1]) for p, h in zip(paths, headers) if h[1] != "RGB"]
            if not_rgb:
                p, mode = not_rgb[0]
                raise ImageFolderError(
                    f"{p}: image mode {mode} ({_bands(mode)} channel(s)), expected 3-channel "
                    f"RGB; {len(not_rgb)} such file(s): "
                    f"{_names([q for q, _ in not_rgb])}. Set data.convert_to_rgb=True to "
                    "convert them (grayscale is replicated, alpha dropped).")
        if not allow_upscaling:
            small = [(p, h[2]) for p, h in zip(paths, headers)
                     if min(h[2]) < self.image_size]
            if small:
                p, (w, h) = small[0]
                raise ImageFolderError(
                    f"{p}: {w}x{h} pixels is smaller than the model's {self.image_size}x"
                    f"{self.image_size} input and would be upscaled; {len(small)} such "
                    f"file(s): {_names([q for q, _ in small])}. Set data.allow_upscaling=True"
                    " to upscale them.")

    def _verify(self, skip: bool) -> None:
        """Decode every image once; raise naming every one that fails (or drop them)."""
        def error(index):
            try:
                self.decode(index)
                return None
            except ImageFolderError as e:
                return str(e)
        with concurrent.futures.ThreadPoolExecutor(self.num_workers) as pool:
            errors = list(pool.map(error, range(len(self.paths))))
        bad = [(p, e) for p, e in zip(self.paths, errors) if e is not None]
        if not bad:
            logging.info(f"{self.directory}: all {len(self.paths)} images decode")
            return
        for _, e in bad:
            logging.warning(e)
        if not skip:
            raise ImageFolderError(
                f"{self.directory}: {len(bad)} of {len(self.paths)} image(s) cannot be "
                f"decoded: {_names([p for p, _ in bad])} (every one is listed above). "
                "Delete or replace them, or set data.skip_bad_images=True to leave them out.")
        bad_paths = {p for p, _ in bad}
        self.paths = [p for p in self.paths if p not in bad_paths]
        if not self.paths:
            raise ImageFolderError(f"{self.directory}: no image can be decoded.")
        logging.warning(f"{self.directory}: skipping {len(bad)} image(s) that cannot be "
                        f"decoded (listed above); {len(self.paths)} remain")

    def __len__(self) -> int:
        return len(self.paths)

    def decode(self, index: int) -> np.ndarray:
        """Image `index` as [S, S, 3] float32 in [-1, 1] (S = image_size)."""
        path = self.paths[index]
        try:
            with Image.open(path) as im:
                im.load()
                if im.mode != "RGB":
                    if not self.convert_to_rgb:
                        raise ImageFolderError(f"{path}: image mode {im.mode}, expected RGB "
                                               "(the file changed since the folder was scanned).")
                    im = im.convert("RGB")
                return fit_square(im, self.image_size)
        except ImageFolderError:
            raise
        except (OSError, ValueError, SyntaxError) as e:
            raise ImageFolderError(
                f"{path}: cannot decode image ({type(e).__name__}: {e}). Delete or replace it."
            ) from e


def _bands(mode: str) -> str:
    """Channels of a PIL mode as text ('L' -> '1', 'RGBA' -> '4')."""
    try:
        return str(Image.getmodebands(mode))
    except ValueError:
        return "unknown number of"
