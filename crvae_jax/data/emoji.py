"""Emoji at 64x64: the real RGB image sets that install offline (npm registry).

No RGB photo dataset (CelebA, CUB, LSUN, CIFAR) is obtainable on a machine that reaches
only the package registries, so the CPU demo and the tests of the RGB models use the
64x64 emoji PNGs of the ``emoji-datasource-*`` npm packages (version 16.0.0, from
https://github.com/iamcal/emoji-data). They are drawings, not photographs: good for
checking that a model trains, not for comparing with the paper. ``data.emoji_sets``
chooses the image sets (``EMOJI_SETS``); each is the same 3,786 emoji, named by their
Unicode code points (``1f600``), drawn by another vendor:

- ``google``: Noto Emoji v2.048 (``emoji-datasource-google``), images under the Apache
  License 2.0 (https://github.com/googlefonts/noto-emoji/blob/main/LICENSE).
- ``twitter``: Twemoji v16.0.1 (``emoji-datasource-twitter``), graphics Copyright Twitter,
  Inc and other contributors (https://github.com/jdecked/twemoji), licensed under
  CC-BY 4.0 (https://creativecommons.org/licenses/by/4.0/). Attribute them where their
  images (or grids of them) are shown; we composite them on white.

The packages' own LICENSE (MIT, Cal Henderson) covers their data and code; the images are
under the vendors' licences above, as the packages' README says. Two sets of the same
release are left out on purpose: ``apple`` ("Copyright Apple Inc., not licensed for
commercial usage": no licence is granted) and ``facebook`` ("no clear licensing"), so
committing grids of their images (training grids, completions) would redistribute
images we have no licence for.

Held-out split (``data.emoji_split``: 'train', 'heldout' or 'all'): an emoji is held out
when the first 8 bytes of the sha256 of its ``split_key`` (the name without its skin-tone
modifiers 1f3fb-1f3ff), read as a big-endian integer, are 0 mod 10. The rule depends only
on the name, so the same emoji is held out in every set, and the skin tones of one emoji
(the same drawing recoloured) are held out together: 337 of the 3,786 images (8.9%).

Categories (``data.emoji_categories``, comma-separated; empty = all): the Unicode
categories of emoji-data's ``emoji.json`` ('Smileys & Emotion', 'People & Body', ...,
``CATEGORIES``), a skin-tone variant in the category of its base emoji. The table
``emoji_categories.json`` beside this file is ``category_table`` of the ``emoji.json``
in ``emoji-datasource@16.0.0`` (MIT), written by ``write_category_table``; it names
every image of the sets exactly once (checked against the names' sha256). A category
is a narrower, more uniform set of drawings: the CPU budget trains on 'Smileys &
Emotion', whose prior samples a small model learns to draw (results/emoji_*_cpu).

``load_emoji`` tries, in order: a tarball the user names, the cache
(``$XDG_CACHE_HOME/crvae_jax/emoji/``), then ``npm pack`` (only the tarball is read, with
``tarfile``; no package code runs). The tarball's sha256 is checked before it is read,
and the decoded array's and names' sha256 before they are used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import tarfile
import tempfile
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
from absl import logging
from PIL import Image

from .idx import DataError
from .sources import npm_pack

EMOJI_VERSION = "16.0.0"
SPLITS = ("train", "heldout", "all")
HELDOUT_MODULUS = 10  # held out: sha256(split_key)[:8] % 10 == 0
SKIN_TONES = frozenset({"1f3fb", "1f3fc", "1f3fd", "1f3fe", "1f3ff"})


@dataclasses.dataclass(frozen=True)
class EmojiSet:
    """One ``emoji-datasource-<name>`` image set and the sha256s it must have."""
    name: str
    tarball_sha256: str  # of the npm tarball
    count: int
    array_sha256: str  # of the decoded uint8 [count, 64, 64, 3] (on white, sorted names)
    names_sha256: str  # of the sorted names joined by "\n" (utf-8)
    licence: str

    @property
    def package(self) -> str:
        return f"emoji-datasource-{self.name}@{EMOJI_VERSION}"

    @property
    def tarball_name(self) -> str:
        return f"emoji-datasource-{self.name}-{EMOJI_VERSION}.tgz"

    @property
    def member_prefix(self) -> str:
        return f"package/img/{self.name}/64/"

    @property
    def cache_name(self) -> str:
        return f"emoji_{self.name}_64.npz"


# Both sets draw the same 3,786 names, so their splits hold the same emoji.
_NAMES_SHA256 = "3fe744cc7268efcb2e346791b34432c7436eca36ba217ba6123559776d5df2bb"
EMOJI_SETS = {
    "google": EmojiSet(
        "google", "fb5fd131b362aab7a55542d2a147a79708cce0a8b1c1bbacd470172708b5c438", 3786,
        "4d7dcb6041f5b93d54200590ac8934be94b5320ee30c23a1ab5c292f0b019612", _NAMES_SHA256,
        "Apache-2.0 (Noto Emoji)"),
    "twitter": EmojiSet(
        "twitter", "f64a530c63bca463bd8317fdc4615ce63a53a0c65018e4ce2d848aaba7a28877", 3786,
        "bfe83701a1646f6818dfe7442322723176538dc01f918865e2e54a415ce5b49f", _NAMES_SHA256,
        "CC-BY-4.0 (Twemoji, Copyright Twitter, Inc and other contributors)"),
}


CATEGORIES = ("Smileys & Emotion", "People & Body", "Animals & Nature", "Food & Drink",
              "Travel & Places", "Activities", "Objects", "Symbols", "Flags", "Component")
CATEGORY_TABLE = Path(__file__).with_name("emoji_categories.json")


class EmojiDataError(DataError):
    """The emoji tarball or its cached array is missing, corrupt or unexpected."""


class EmojiImages(NamedTuple):
    images: np.ndarray  # [N, 64, 64, 3] uint8, on white
    names: np.ndarray  # [N] str: the emoji's code points, e.g. '1f44b-1f3fb'
    sets: np.ndarray  # [N] str: the image set each image is from, e.g. 'google'


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/crvae_jax/emoji`` (``~/.cache/crvae_jax/emoji`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "crvae_jax" / "emoji"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def names_sha256(names: Sequence[str]) -> str:
    return _sha256("\n".join(names).encode("utf-8"))


def parse_sets(text: str) -> tuple:
    """'google, twitter' -> ('google', 'twitter'); ValueError naming data.emoji_sets for
    an unknown, repeated or empty choice."""
    chosen = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in EMOJI_SETS]
    if unknown or not chosen or len(set(chosen)) != len(chosen):
        raise ValueError(f"data.emoji_sets={text!r}: give distinct sets from "
                         f"{tuple(EMOJI_SETS)}, comma-separated ('apple' and 'facebook' are "
                         "left out: their images are not licensed for this use)")
    return tuple(chosen)


def parse_categories(text: str) -> tuple:
    """'Smileys & Emotion, Animals & Nature' -> the CATEGORIES they name (case is
    ignored); '' -> () (every category). ValueError naming data.emoji_categories for an
    unknown or repeated one."""
    by_lower = {c.lower(): c for c in CATEGORIES}
    chosen = [c.strip() for c in text.split(",") if c.strip()]
    unknown = [c for c in chosen if c.lower() not in by_lower]
    if unknown or len({c.lower() for c in chosen}) != len(chosen):
        raise ValueError(f"data.emoji_categories={text!r}: give distinct categories from "
                         f"{CATEGORIES}, comma-separated (empty: all)")
    return tuple(by_lower[c.lower()] for c in chosen)


def category_table(emoji_json: bytes) -> dict:
    """{image name: category} from emoji-data's ``emoji.json``; skin-tone variants take
    their base emoji's category."""
    table = {}
    for entry in json.loads(emoji_json):
        for image in [entry["image"]] + [v["image"] for v in
                                         (entry.get("skin_variations") or {}).values()]:
            table[image.removesuffix(".png")] = entry["category"]
    return table


def write_category_table(tarball: str | os.PathLike, path: Path = CATEGORY_TABLE) -> Path:
    """Writes ``emoji_categories.json`` from an ``emoji-datasource-<any>-16.0.0.tgz``
    (``npm pack emoji-datasource@16.0.0``): {category: sorted names} and the sha256 of
    the ``emoji.json`` it was read from."""
    with tarfile.open(tarball, "r:gz") as tar:
        data = tar.extractfile("package/emoji.json").read()
    by_category = {}
    for name, category in category_table(data).items():
        by_category.setdefault(category, []).append(name)
    head = {"source": f"package/emoji.json of {Path(tarball).name}",
            "emoji_json_sha256": _sha256(data)}
    lines = [f"{json.dumps(k)}: {json.dumps(v)}," for k, v in head.items()]
    lines += ['"categories": {'] + [
        f"  {json.dumps(c)}: {json.dumps(sorted(n))}," for c, n in sorted(by_category.items())]
    lines[-1] = lines[-1].rstrip(",")
    path.write_text("{\n" + "\n".join(lines) + "\n}}\n", encoding="utf-8")
    return path  # one category per line


def categories_of(names: Sequence[str]) -> np.ndarray:
    """The category of each image name (``CATEGORY_TABLE``), [N] str."""
    with open(CATEGORY_TABLE, encoding="utf-8") as f:
        table = {n: c for c, names_ in json.load(f)["categories"].items() for n in names_}
    missing = [n for n in names if n not in table]
    if missing:
        raise EmojiDataError(f"{CATEGORY_TABLE} names no category for {missing[:5]} "
                             f"({len(missing)} images)")
    return np.array([table[n] for n in names])


def split_key(name: str) -> str:
    """The name an emoji is split by: its code points without skin-tone modifiers, so
    '1f44b-1f3fb' (waving hand, light skin) -> '1f44b' (a modifier alone stays itself)."""
    parts = [p for p in name.split("-") if p not in SKIN_TONES]
    return "-".join(parts) or name


def is_heldout(name: str) -> bool:
    """Whether emoji `name` is in the held-out split (module doc), in every set."""
    digest = hashlib.sha256(split_key(name).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % HELDOUT_MODULUS == 0


def split_indices(names: Sequence[str], split: str) -> np.ndarray:
    """Indices (ascending) of the images of `split` ('train', 'heldout', 'all')."""
    if split not in SPLITS:
        raise ValueError(f"data.emoji_split={split!r}: choose one of {SPLITS}")
    if split == "all":
        return np.arange(len(names))
    heldout = np.array([is_heldout(n) for n in names], bool)
    return np.flatnonzero(heldout if split == "heldout" else ~heldout)


def on_white(image: Image.Image) -> np.ndarray:
    """Any PIL image -> uint8 [H, W, 3], transparent pixels composited on white."""
    rgba = np.asarray(image.convert("RGBA"), np.float32)  # [H, W, 4]
    alpha = rgba[..., 3:] / 255.0
    rgb = rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)
    return np.round(rgb).astype(np.uint8)


def decode_tarball(tarball: str | os.PathLike, emoji_set: str = "google", *,
                   check_sha256: bool = True) -> EmojiImages:
    """The 64x64 PNGs of an ``emoji-datasource-<emoji_set>`` tarball, sorted by name:
    images uint8 [N, 64, 64, 3] and their names (the file names without '.png')."""
    spec, tarball = EMOJI_SETS[emoji_set], Path(tarball)
    try:
        data = tarball.read_bytes()
    except OSError as e:
        raise EmojiDataError(f"{tarball}: cannot read the emoji tarball ({e})") from e
    if check_sha256 and _sha256(data) != spec.tarball_sha256:
        raise EmojiDataError(
            f"{tarball}: sha256 {_sha256(data)} is not that of {spec.tarball_name} "
            f"({spec.tarball_sha256}); refusing to read it.")
    images, names = [], []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tf:
            members = sorted((m for m in tf.getmembers() if m.isfile()
                              and m.name.startswith(spec.member_prefix)
                              and m.name.endswith(".png")), key=lambda m: m.name)
            for m in members:
                with Image.open(io.BytesIO(tf.extractfile(m).read())) as im:
                    if im.size != (64, 64):
                        raise EmojiDataError(f"{tarball}:{m.name}: {im.size}, expected 64x64")
                    images.append(on_white(im))
                names.append(m.name[len(spec.member_prefix):-len(".png")])
    except (tarfile.TarError, OSError, EOFError) as e:
        raise EmojiDataError(f"{tarball}: not a readable npm tarball ({e})") from e
    if not images:
        raise EmojiDataError(f"{tarball}: no {spec.member_prefix}*.png members")
    return EmojiImages(np.stack(images), np.array(names), np.full(len(names), emoji_set))


def _check(loaded: EmojiImages, emoji_set: str, where: str) -> EmojiImages:
    spec = EMOJI_SETS[emoji_set]
    images, names = loaded.images, loaded.names
    if images.shape != (spec.count, 64, 64, 3) or images.dtype != np.uint8 or \
            names.shape != (spec.count,):
        raise EmojiDataError(f"{where}: arrays {images.shape} {images.dtype} and names "
                             f"{names.shape}, expected ({spec.count}, 64, 64, 3) uint8 and "
                             f"({spec.count},)")
    actual = _sha256(np.ascontiguousarray(images).tobytes())
    if actual != spec.array_sha256:
        raise EmojiDataError(f"{where}: decoded {emoji_set} images have sha256 {actual}, "
                             f"expected {spec.array_sha256}")
    actual = names_sha256(names.tolist())
    if actual != spec.names_sha256:
        raise EmojiDataError(f"{where}: the {emoji_set} image names have sha256 {actual}, "
                             f"expected {spec.names_sha256}")
    return EmojiImages(images, names, np.full(len(names), emoji_set))


def load_emoji(emoji_set: str = "google", *, tarball: str | os.PathLike | None = None,
               cache_dir: str | os.PathLike | None = None,
               allow_download: bool = True) -> EmojiImages:
    """All images of one set (``EMOJI_SETS``), sorted by name, on white, verified.

    Args:
      emoji_set: 'google' (3,786 Noto emoji) or 'twitter' (3,786 Twemoji).
      tarball: the set's ``emoji-datasource-<set>-16.0.0.tgz`` fetched yourself; when
        given it is the only source (a missing or wrong file is an error).
      cache_dir: where the decoded arrays are kept (default ``default_cache_dir()``).
      allow_download: if False, never run ``npm pack``.
    """
    if emoji_set not in EMOJI_SETS:
        raise EmojiDataError(f"unknown emoji set {emoji_set!r}; choose from "
                             f"{tuple(EMOJI_SETS)}")
    spec = EMOJI_SETS[emoji_set]
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    cached = cache / spec.cache_name
    if tarball:
        return _check(decode_tarball(Path(tarball).expanduser(), emoji_set), emoji_set,
                      str(tarball))
    if cached.is_file():
        try:
            with np.load(cached, allow_pickle=False) as f:
                return _check(EmojiImages(f["images"], f["names"], None), emoji_set,
                              str(cached))
        except (OSError, ValueError, KeyError, EmojiDataError) as e:
            logging.warning("%s: unusable (%s); fetching it again", cached, e)
    if not allow_download:
        raise EmojiDataError(
            f"no cached {emoji_set} emoji images at {cached} and data.allow_download="
            f"False. Run `npm pack {spec.package}` and pass the tarball with "
            f"--config.data.emoji_tarball=/path/to/{spec.tarball_name} (one per set in "
            "data.emoji_sets, comma-separated, in that order)")
    with tempfile.TemporaryDirectory(prefix="emoji-npm-") as tmp:
        logging.info("fetching %s from the npm registry (once)", spec.package)
        path = npm_pack(spec.package, spec.tarball_name, tmp, error=EmojiDataError)
        loaded = _check(decode_tarball(path, emoji_set), emoji_set,
                        f"npm package {spec.package}")
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(dir=cache, suffix=".npz.tmp")
    with os.fdopen(fd, "wb") as f:
        np.savez(f, images=loaded.images, names=loaded.names)
    os.replace(tmp_path, cached)  # atomic: a killed run never leaves half a file
    return loaded


def load_emoji_split(sets: str = "google", split: str = "all", *, tarballs: str = "",
                     categories: str = "",
                     cache_dir: str | os.PathLike | None = None,
                     allow_download: bool = True) -> EmojiImages:
    """The images of `split` from every set of `sets` ('google', 'google,twitter'),
    set after set in that order, each set sorted by name; only those of `categories`
    (comma-separated CATEGORIES, ``data.emoji_categories``; "" = all).

    tarballs: "" or comma-separated tarballs, one per set of `sets` in that order
    (``data.emoji_tarball``).
    """
    chosen = parse_sets(sets)
    wanted = parse_categories(categories)
    paths = [p.strip() for p in tarballs.split(",") if p.strip()]
    if paths and len(paths) != len(chosen):
        raise EmojiDataError(f"data.emoji_tarball names {len(paths)} tarball(s) for the "
                             f"{len(chosen)} set(s) {chosen} of data.emoji_sets: give one "
                             "per set, comma-separated, in that order (or none)")
    parts = []
    for i, emoji_set in enumerate(chosen):
        loaded = load_emoji(emoji_set, tarball=paths[i] if paths else None,
                            cache_dir=cache_dir, allow_download=allow_download)
        keep = split_indices(loaded.names.tolist(), split)
        if wanted:
            keep = keep[np.isin(categories_of(loaded.names[keep].tolist()), wanted)]
            if not len(keep):
                raise EmojiDataError(
                    f"data.emoji_categories={categories!r}: no {emoji_set} emoji of "
                    f"those categories in split {split!r}")
        parts.append(EmojiImages(*(a[keep] for a in loaded)))
        logging.info("emoji set %s (%s): %d of %d images, split %s%s", emoji_set,
                     EMOJI_SETS[emoji_set].licence, len(keep), len(loaded.names), split,
                     f", categories {', '.join(wanted)}" if wanted else "")
    return EmojiImages(*(np.concatenate(arrays) for arrays in zip(*parts)))
