"""Reader for the IDX format of MNIST, Fashion-MNIST, EMNIST and friends.

Layout (big-endian): two zero bytes, a type code, the number of dimensions n, n uint32 sizes,
then the values in C order. Files may be gzip-compressed; the gzip magic decides, not the name.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib

import numpy as np

from tinynet.errors import DataFileError

# IDX type code -> big-endian dtype
IDX_TYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
GZIP_MAGIC = b"\x1f\x8b"


def read_bytes(path: str | os.PathLike) -> bytes:
    """The file's payload, decompressed when it is gzip; DataFileError naming the file if not."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError as exc:
        raise DataFileError(f"data file not found: {path}") from exc
    except OSError as exc:
        raise DataFileError(f"cannot read data file {path}: {exc}") from exc
    if raw[:2] != GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataFileError(f"corrupt or truncated gzip file {path}: {exc}") from exc


def parse_idx(payload: bytes, name: str = "<bytes>") -> np.ndarray:
    """The array stored in an IDX payload; DataFileError (naming ``name``) when malformed."""
    if len(payload) < 4 or payload[0] != 0 or payload[1] != 0:
        raise DataFileError(f"not an IDX file (bad magic number {payload[:4].hex()}): {name}")
    code, ndim = payload[2], payload[3]
    if code not in IDX_TYPES:
        raise DataFileError(f"not an IDX file (unknown type code 0x{code:02x}): {name}")
    header = 4 + 4 * ndim
    if len(payload) < header:
        raise DataFileError(f"truncated IDX file (header cut short): {name}")
    dims = tuple(int(d) for d in np.frombuffer(payload, ">u4", count=ndim, offset=4))
    dtype = IDX_TYPES[code]
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(payload) != expected:
        what = "truncated" if len(payload) < expected else "oversized"
        raise DataFileError(
            f"{what} IDX file: {name} has {len(payload)} bytes, its header {dims} needs {expected}"
        )
    data = np.frombuffer(payload, dtype, offset=header).reshape(dims)
    return data.astype(dtype.newbyteorder("="))  # native byte order, and a writable copy


def read_idx(path: str | os.PathLike, sha256: str | None = None) -> np.ndarray:
    """The array in an IDX file, raw or ``.gz``.

    With ``sha256``, the decompressed payload must have that digest (so a recompressed copy of the
    canonical file passes). Raises DataFileError naming the file when it is missing, truncated,
    corrupt, not IDX or fails the checksum.
    """
    payload = read_bytes(path)
    array = parse_idx(payload, os.fspath(path))  # first, for the more telling message
    if sha256 is not None:
        digest = hashlib.sha256(payload).hexdigest()
        if digest != sha256.lower():
            raise DataFileError(
                f"checksum mismatch for {os.fspath(path)}: SHA-256 of its contents is "
                f"{digest}, expected {sha256}"
            )
    return array
