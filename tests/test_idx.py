"""The IDX reader on files written here by hand with struct: good, truncated, corrupt, wrong."""

from __future__ import annotations

import gzip
import hashlib
import struct

import numpy as np
import pytest

import tinynet as tn


def idx_bytes(code: int, dims: tuple[int, ...], body: bytes) -> bytes:
    return struct.pack(">BBBB", 0, 0, code, len(dims)) + struct.pack(f">{len(dims)}I", *dims) + body


@pytest.mark.parametrize("compressed", [False, True])
def test_reads_uint8_images(tmp_path, compressed):
    body = bytes(range(24))
    payload = idx_bytes(0x08, (2, 3, 4), body)
    path = tmp_path / ("x.idx.gz" if compressed else "x.idx")
    path.write_bytes(gzip.compress(payload) if compressed else payload)
    arr = tn.datasets.read_idx(path, sha256=hashlib.sha256(payload).hexdigest())
    assert arr.dtype == np.uint8 and arr.shape == (2, 3, 4)
    assert arr[1, 2, 3] == 23 and arr[0, 1, 0] == 4


def test_reads_big_endian_int16_and_float64(tmp_path):
    path = tmp_path / "a"
    path.write_bytes(idx_bytes(0x0B, (3,), struct.pack(">3h", -2, 300, 7)))
    arr = tn.datasets.read_idx(path)
    assert arr.tolist() == [-2, 300, 7] and arr.dtype == np.int16
    assert arr.dtype.byteorder in ("=", "<", "|")  # native order for fast arithmetic
    path.write_bytes(idx_bytes(0x0E, (2,), struct.pack(">2d", 1.5, -0.25)))
    assert tn.datasets.read_idx(path).tolist() == [1.5, -0.25]


def test_truncated_file(tmp_path):
    path = tmp_path / "cut.idx"
    path.write_bytes(idx_bytes(0x08, (10, 10), bytes(99)))
    with pytest.raises(tn.DataFileError, match=r"truncated.*cut\.idx.*111.*112"):
        tn.datasets.read_idx(path)
    path.write_bytes(b"\x00\x00\x08\x03\x00\x00")
    with pytest.raises(tn.DataFileError, match="header"):
        tn.datasets.read_idx(path)


def test_oversized_file(tmp_path):
    path = tmp_path / "long.idx"
    path.write_bytes(idx_bytes(0x08, (2,), bytes(3)))
    with pytest.raises(tn.DataFileError, match="oversized"):
        tn.datasets.read_idx(path)


def test_corrupt_and_truncated_gzip(tmp_path):
    packed = bytearray(gzip.compress(idx_bytes(0x08, (100,), bytes(range(100)))))
    path = tmp_path / "bad.gz"
    path.write_bytes(bytes(packed[: len(packed) // 2]))
    with pytest.raises(tn.DataFileError, match=r"bad\.gz"):
        tn.datasets.read_idx(path)
    packed[-6] ^= 0xFF  # break the CRC
    path.write_bytes(bytes(packed))
    with pytest.raises(tn.DataFileError, match=r"corrupt.*bad\.gz"):
        tn.datasets.read_idx(path)


def test_wrong_magic(tmp_path):
    path = tmp_path / "png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(20))
    with pytest.raises(tn.DataFileError, match="bad magic.*png"):
        tn.datasets.read_idx(path)
    path.write_bytes(idx_bytes(0x07, (1,), b"\x00"))
    with pytest.raises(tn.DataFileError, match="type code 0x07"):
        tn.datasets.read_idx(path)


def test_checksum_mismatch_and_missing_file(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(idx_bytes(0x08, (1,), b"\x05"))
    with pytest.raises(tn.DataFileError, match="checksum mismatch for .*x"):
        tn.datasets.read_idx(path, sha256="0" * 64)
    with pytest.raises(tn.DataFileError, match="not found.*nothing"):
        tn.datasets.read_idx(tmp_path / "nothing")


def test_dimensions_whose_product_overflows_int64(tmp_path):
    # 65536^4 = 2^64 values: more than int64 can count; the file has none of them
    path = tmp_path / "huge.idx"
    path.write_bytes(struct.pack(">BBBB", 0, 0, 0x08, 4) + struct.pack(">4I", *[65536] * 4))
    with pytest.raises(tn.DataFileError, match=r"truncated.*huge\.idx"):
        tn.datasets.read_idx(path)


def test_more_dimensions_than_numpy_allows(tmp_path):
    path = tmp_path / "deep.idx"
    path.write_bytes(idx_bytes(0x08, (1,) * 65, b"\x07"))
    with pytest.raises(tn.DataFileError, match=r"deep\.idx declares 65 dimensions"):
        tn.datasets.read_idx(path)
    path.write_bytes(idx_bytes(0x08, (1,) * 64, b"\x07"))  # the most NumPy takes
    assert tn.datasets.read_idx(path).reshape(-1).tolist() == [7]


def test_a_gzip_member_followed_by_another_is_read_whole(tmp_path):
    payload = idx_bytes(0x08, (6,), bytes(range(6)))
    path = tmp_path / "two-members.gz"
    path.write_bytes(gzip.compress(payload[:7]) + gzip.compress(payload[7:]))
    assert tn.datasets.read_idx(path).tolist() == list(range(6))


def test_max_bytes_stops_a_file_larger_than_the_caller_allows(tmp_path):
    path = tmp_path / "big.idx"
    path.write_bytes(idx_bytes(0x08, (1000,), bytes(1000)))
    with pytest.raises(tn.DataFileError, match=r"oversized.*big\.idx.*500 bytes"):
        tn.datasets.read_idx(path, max_bytes=500)
