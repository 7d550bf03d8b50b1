"""Reader and writer for the IDX file format used by the MNIST distribution.

An IDX file is::

    byte 0-1   0x00 0x00            magic prefix
    byte 2     dtype code           0x08 = uint8, 0x09 = int8, 0x0B = int16,
                                    0x0C = int32, 0x0D = float32, 0x0E = float64
    byte 3     ndim
    4 * ndim   dimensions           big-endian uint32 each
    payload    prod(dims) values    big-endian, row-major

Files ending in ``.gz`` are transparently decompressed.
"""

from __future__ import annotations

import gzip
import os
import tempfile
import zlib
from pathlib import Path

import numpy as np

__all__ = ["MnistDataError", "IdxFormatError", "read_idx", "write_idx", "open_maybe_gz"]

# IDX dtype code -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_DTYPE_CODES = {dt.newbyteorder("="): code for code, dt in _IDX_DTYPES.items()}


class DataError(ValueError):
    """Base class for every data error raised by ``crvae_jax.data``.

    Messages always name the offending file and say what to do about it.
    """


class MnistDataError(DataError):
    """MNIST files or splits are missing, corrupt or inconsistent."""


class IdxFormatError(MnistDataError):
    """An IDX file is malformed (bad magic, truncated or over-long payload)."""


def open_maybe_gz(path: str | os.PathLike):
    """Open ``path`` for binary reading, decompressing it if it ends in ``.gz``."""
    path = Path(path)
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse an IDX file (raw or ``.gz``) into a native-byte-order numpy array.

    Raises:
      IdxFormatError: bad magic number, unknown dtype code, truncated header,
        or a payload whose length differs from ``prod(dims) * itemsize``.
    """
    path = Path(path)
    try:
        with open_maybe_gz(path) as f:
            magic = f.read(4)
            if len(magic) < 4:
                raise IdxFormatError(
                    f"{path}: file is only {len(magic)} bytes long, too short for an IDX "
                    "header; it is truncated or not an IDX file. Delete it and re-download."
                )
            if magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_DTYPES:
                raise IdxFormatError(
                    f"{path}: bad IDX magic number 0x{magic.hex()} (expected 0x0000 followed by "
                    f"a dtype code in {sorted(hex(c) for c in _IDX_DTYPES)} and ndim); this is not "
                    "a raw IDX file (is it compressed without a .gz suffix?)."
                )
            dtype, ndim = _IDX_DTYPES[magic[2]], magic[3]
            dim_bytes = f.read(4 * ndim)
            if len(dim_bytes) < 4 * ndim:
                raise IdxFormatError(
                    f"{path}: header truncated while reading {ndim} dimensions. "
                    "Delete the file and re-download it."
                )
            dims = tuple(int(d) for d in np.frombuffer(dim_bytes, dtype=">u4"))
            payload = f.read()
    except (OSError, EOFError, zlib.error) as e:  # e.g. a truncated or corrupt .gz stream
        raise IdxFormatError(f"{path}: cannot read IDX file ({type(e).__name__}: {e}).") from e

    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(payload) != expected:
        kind = "truncated" if len(payload) < expected else "longer than its header says"
        raise IdxFormatError(
            f"{path}: IDX payload is {kind}: header dims {dims} of {dtype.name} need "
            f"{expected} bytes, found {len(payload)} bytes. Delete the file and re-download it."
        )
    # astype copies into a writable, native-byte-order array.
    return np.frombuffer(payload, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file (gzip-compressed if ``path`` ends in ``.gz``).

    Intended for uint8 arrays (MNIST images/labels, test fixtures); the other IDX
    dtypes are accepted too. The file is written atomically (temp file + rename).
    """
    path = Path(path)
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    if native not in _DTYPE_CODES:
        raise IdxFormatError(f"{path}: cannot write dtype {array.dtype} as IDX (use uint8).")
    if array.ndim > 255 or any(d >= 2**32 for d in array.shape):
        raise IdxFormatError(f"{path}: shape {array.shape} cannot be represented in IDX.")
    code = _DTYPE_CODES[native]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    body = np.ascontiguousarray(array, dtype=_IDX_DTYPES[code]).tobytes()

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as raw:
            if path.suffix == ".gz":
                with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
                    gz.write(header + body)
            else:
                raw.write(header + body)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
