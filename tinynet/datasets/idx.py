"""Reader for the IDX format of MNIST, Fashion-MNIST, EMNIST and friends.

Layout (big-endian): two zero bytes, a type code, the number of dimensions n, n uint32 sizes,
then the values in C order. Files may be gzip-compressed; the gzip magic decides, not the name.

Files are read and inflated in chunks, and reading stops as soon as the data is longer than its
header declares (or than ``max_bytes``): a small gzip bomb costs a chunk, not gigabytes.
"""

from __future__ import annotations

import hashlib
import io
import os
import zlib
from collections.abc import Iterator
from typing import BinaryIO

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
CHUNK = 1 << 20
MAX_DIMS = 64  # NumPy's limit on an array's dimensions


def _inflate(f: BinaryIO) -> Iterator[bytes]:
    """The decompressed bytes of a gzip stream (every member), at most CHUNK at a time, so a
    bomb is never inflated further than the caller reads."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    data = f.read(CHUNK)
    while data:
        if out := d.decompress(data, CHUNK):
            yield out
        if d.eof:  # another member may follow
            data = d.unused_data or f.read(CHUNK)
            if data:
                d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            continue
        data = d.unconsumed_tail or f.read(CHUNK)
        while not data and not d.eof and (out := d.decompress(b"", CHUNK)):
            yield out  # output zlib still holds after the last input
    if not d.eof:
        raise EOFError("compressed file ended before the end-of-stream marker")


def _chunks(f: BinaryIO) -> Iterator[bytes]:
    """The payload of ``f`` in chunks, inflated when it starts with the gzip magic."""
    head = f.read(2)
    f.seek(0)
    if head == GZIP_MAGIC:
        yield from _inflate(f)
    else:
        while chunk := f.read(CHUNK):
            yield chunk


def idx_header(payload: bytes, name: str) -> tuple[np.dtype, tuple[int, ...], int] | None:
    """(dtype, dims, total bytes) from the start of an IDX payload; None while the header is
    incomplete; DataFileError naming ``name`` when it is not an IDX header."""
    if len(payload) >= 2 and (payload[0] != 0 or payload[1] != 0):
        raise DataFileError(f"not an IDX file (bad magic number {payload[:4].hex()}): {name}")
    if len(payload) < 4:
        return None
    code, ndim = payload[2], payload[3]
    if code not in IDX_TYPES:
        raise DataFileError(f"not an IDX file (unknown type code 0x{code:02x}): {name}")
    if ndim > MAX_DIMS:
        raise DataFileError(f"IDX file {name} declares {ndim} dimensions; at most {MAX_DIMS}")
    header = 4 + 4 * ndim
    if len(payload) < header:
        return None
    dims = tuple(int.from_bytes(payload[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = IDX_TYPES[code]
    size = header + dtype.itemsize * int(np.prod(dims, dtype=object))  # Python ints: no overflow
    return dtype, dims, size


def read_payload(
    source: str | os.PathLike | bytes, name: str | None = None, max_bytes: int | None = None
) -> bytes:
    """The decompressed payload of an IDX file (a path, or the file's bytes), read in chunks.

    Stops with DataFileError naming the file as soon as the payload is longer than its header
    declares or than ``max_bytes``, whichever is less.
    """
    name = name or ("<bytes>" if isinstance(source, bytes) else os.fspath(source))
    try:
        f = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115
    except FileNotFoundError as exc:
        raise DataFileError(f"data file not found: {name}") from exc
    except OSError as exc:
        raise DataFileError(f"cannot read data file {name}: {exc}") from exc
    out, declared = bytearray(), None
    try:
        with f:
            for chunk in _chunks(f):
                out += chunk
                if declared is None and (header := idx_header(bytes(out[:1024]), name)):
                    declared = header[2]
                limit = min((n for n in (declared, max_bytes) if n is not None), default=None)
                if limit is not None and len(out) > limit:
                    what = "its header declares" if limit == declared else "such a file can have"
                    raise DataFileError(
                        f"oversized IDX file: {name} holds more than the {limit:,} bytes "
                        f"{what} (stopped reading: a damaged file or a gzip bomb)"
                    )
    except (OSError, EOFError, zlib.error) as exc:
        if isinstance(exc, DataFileError):
            raise
        raise DataFileError(f"corrupt or truncated gzip file {name}: {exc}") from exc
    return bytes(out)


def check_sha256(payload: bytes, sha256: str, name: str) -> None:
    """DataFileError naming the file unless ``payload`` has the SHA-256 ``sha256``."""
    digest = hashlib.sha256(payload).hexdigest()
    if digest != sha256.lower():
        raise DataFileError(
            f"checksum mismatch for {name}: SHA-256 of its contents is {digest}, expected {sha256}"
        )


def read_bytes(path: str | os.PathLike, max_bytes: int | None = None) -> bytes:
    """The file's payload, decompressed when it is gzip; DataFileError naming the file if not."""
    return read_payload(path, max_bytes=max_bytes)


def parse_idx(payload: bytes, name: str = "<bytes>") -> np.ndarray:
    """The array stored in an IDX payload; DataFileError (naming ``name``) when malformed."""
    header = idx_header(payload, name)
    if header is None:
        raise DataFileError(f"truncated IDX file (header cut short): {name}")
    dtype, dims, expected = header
    if len(payload) != expected:
        what = "truncated" if len(payload) < expected else "oversized"
        raise DataFileError(
            f"{what} IDX file: {name} has {len(payload)} bytes, its header {dims} needs {expected}"
        )
    data = np.frombuffer(payload, dtype, offset=4 + 4 * len(dims)).reshape(dims)
    return data.astype(dtype.newbyteorder("="))  # native byte order, and a writable copy


def read_idx(
    path: str | os.PathLike, sha256: str | None = None, max_bytes: int | None = None
) -> np.ndarray:
    """The array in an IDX file, raw or ``.gz``.

    With ``sha256``, the decompressed payload must have that digest (so a recompressed copy of the
    canonical file passes). Raises DataFileError naming the file when it is missing, truncated,
    corrupt, not IDX, larger than its header or ``max_bytes`` says, or fails the checksum.
    """
    name = os.fspath(path)
    payload = read_payload(path, name, max_bytes)
    array = parse_idx(payload, name)  # first, for the more telling message
    if sha256 is not None:
        check_sha256(payload, sha256, name)
    return array
