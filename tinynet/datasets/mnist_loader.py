"""MNIST: found on disk or downloaded with checksums, and a small sample shipped in the package.

Where ``mnist()`` looks, in order: ``data_dir``, ``$TINYNET_DATA_DIR``, ``~/.cache/tinynet/mnist``
(``$XDG_CACHE_HOME/tinynet/mnist`` when that is set); each file may be raw or ``.gz``. If a file is
in none of them it is downloaded from the mirrors (``mirrors=``, or ``$TINYNET_MNIST_MIRRORS`` as a
comma-separated list) into the cache. Any failure of one mirror (refused, HTTP error, too slow
for the per-file ``deadline``, bad gzip, too long, wrong checksum) moves on to the next. Every
file, found or downloaded, must match the SHA-256 of the canonical decompressed file, so
recompressed copies pass and damaged ones do not; files are never inflated past their known size.

MNIST (LeCun, Cortes, Burges) is licensed CC BY-SA 3.0; credit Yann LeCun and Corinna Cortes.
"""

from __future__ import annotations

import gzip
import http.client
import os
import tempfile
import time
import urllib.request
import warnings
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from tinynet.datasets.idx import check_sha256, parse_idx, read_bytes, read_idx, read_payload
from tinynet.errors import DataFileError, InvalidInputError

FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
PIXELS = 28 * 28  # per image: a network's input features
# Decompressed sizes: a 16-byte (images) or 8-byte (labels) header, then one byte per value.
SIZES = {
    "train-images-idx3-ubyte": 16 + 60_000 * PIXELS,
    "train-labels-idx1-ubyte": 8 + 60_000,
    "t10k-images-idx3-ubyte": 16 + 10_000 * PIXELS,
    "t10k-labels-idx1-ubyte": 8 + 10_000,
}
TIMEOUT = 30.0  # seconds a mirror may stay silent
DEADLINE = 600.0  # seconds for one file from one mirror, however it trickles (~16 KB/s for 9.9 MB)
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
OFFLINE_HINT = (
    ". Offline? Point data_dir= or $TINYNET_DATA_DIR at a folder with the four MNIST files, "
    "or use tn.datasets.mnist_sample() (5,000/1,000 images shipped in the package; the "
    "command line: --sample)"
)
SAMPLE_DIR = Path(__file__).with_name("mnist_sample")
SAMPLE_NAME = "embedded MNIST sample (5,000 train / 1,000 test images), NOT the full MNIST"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tinynet" / "mnist"


def search_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The folders ``mnist()`` looks in, in order."""
    dirs = [Path(data_dir)] if data_dir else []
    if os.environ.get("TINYNET_DATA_DIR"):
        dirs.append(Path(os.environ["TINYNET_DATA_DIR"]))
    dirs.append(cache_dir())
    return dirs


def mirror_list(mirrors: list[str] | tuple[str, ...] | None = None) -> list[str]:
    if mirrors is None:
        env = os.environ.get("TINYNET_MNIST_MIRRORS", "")
        mirrors = [m.strip() for m in env.split(",") if m.strip()] or list(MIRRORS)
    return [m if m.endswith("/") else m + "/" for m in mirrors]


def _find(name: str, dirs: list[Path]) -> Path | None:
    for folder in dirs:
        for candidate in (folder / (name + ".gz"), folder / name):
            if candidate.is_file():
                return candidate
    return None


def _fetch(url: str, timeout: float, deadline: float, max_bytes: int, progress: bool) -> bytes:
    """The body at ``url``. Raises on HTTP errors, on a body shorter than announced or longer
    than ``max_bytes``, and once ``deadline`` seconds have passed, however the bytes trickle."""
    give_up = time.monotonic() + deadline

    def remaining() -> float:
        left = give_up - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"gave up after {deadline:g} s (the download deadline)")
        return left

    with urllib.request.urlopen(url, timeout=min(timeout, remaining())) as response:
        size = int(response.headers.get("Content-Length") or 0)
        if size > max_bytes:
            raise ValueError(f"announces {size:,} bytes; the file has at most {max_bytes:,}")
        body = bytearray()
        with tqdm(
            total=size or None,
            unit="B",
            unit_scale=True,
            disable=not progress,
            desc=url.rsplit("/", 1)[-1],
            leave=False,
        ) as bar:
            while True:
                remaining()
                # read1: whatever has arrived (read(n) would wait for all n bytes)
                chunk = response.read1(1 << 16)
                if not chunk:
                    break
                body += chunk
                bar.update(len(chunk))
                if len(body) > max_bytes:
                    raise ValueError(f"sent more than {max_bytes:,} bytes; the file has fewer")
    if size and len(body) != size:
        raise http.client.IncompleteRead(bytes(body), size - len(body))
    return bytes(body)


def download(
    name: str,
    target_dir: Path,
    mirrors: list[str],
    timeout: float = TIMEOUT,
    progress: bool = False,
    deadline: float = DEADLINE,
) -> Path:
    """Fetch ``name``.gz from the first mirror whose copy passes the checksum; save atomically.

    Any failure of one mirror (refused, HTTP error, too slow, too long, bad gzip, wrong
    checksum) moves on to the next; DataFileError lists them all when none is good.
    """
    failures = []
    # gzip of MNIST is smaller than the raw file; a mirror may also serve it uncompressed
    max_bytes = SIZES[name] + (1 << 16)
    for mirror in mirrors:
        url = mirror + name + ".gz"
        try:
            body = _fetch(url, timeout, deadline, max_bytes, progress)
            payload = read_payload(body, url, max_bytes=SIZES[name])
            check_sha256(payload, SHA256[name], url)
        except Exception as exc:  # whatever one mirror does wrong, try the next
            failures.append(f"{url}: {exc}")
            continue
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / (name + ".gz")
        fd, tmp = tempfile.mkstemp(dir=target_dir, prefix=".download-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(body if body[:2] == b"\x1f\x8b" else gzip.compress(payload))
            os.replace(tmp, target)
        except BaseException:
            os.unlink(tmp)
            raise
        return target
    raise MnistUnavailableError(
        f"could not download {name}: " + "; ".join(failures or ["no mirrors given"]) + OFFLINE_HINT
    )


class MnistUnavailableError(DataFileError):
    """A full MNIST file is neither on disk nor downloadable (a damaged file is another error)."""


def mnist_file(
    name: str,
    data_dir: str | os.PathLike | None = None,
    download_: bool = True,
    mirrors: list[str] | None = None,
    progress: bool = False,
    deadline: float = DEADLINE,
) -> np.ndarray:
    """One verified MNIST file as an array (see the module docstring for where it comes from)."""
    dirs = search_dirs(data_dir)
    path = _find(name, dirs)
    if path is None:
        if not download_:
            raise MnistUnavailableError(
                f"MNIST file {name} not found in {', '.join(map(str, dirs))} and downloading "
                "is off" + OFFLINE_HINT
            )
        mirrors = mirror_list(mirrors)
        path = download(name, cache_dir(), mirrors, progress=progress, deadline=deadline)
    return read_idx(path, sha256=SHA256[name], max_bytes=SIZES[name])


def _finish(images: np.ndarray, labels: np.ndarray, flatten: bool, as_float: bool):
    if len(images) != len(labels):
        raise DataFileError(f"{len(images)} images but {len(labels)} labels")
    if flatten:
        images = images.reshape(len(images), -1)
    if as_float:
        images = images.astype(np.float32) / np.float32(255)
    return images, labels.astype(np.int64)


def check_deadline(deadline: float) -> float:
    """``deadline`` as a float of seconds; InvalidInputError unless it is a positive number."""
    if isinstance(deadline, bool) or not isinstance(deadline, int | float) or not deadline > 0:
        raise InvalidInputError(
            f"download deadline must be a positive number of seconds, got {deadline!r}"
        )
    return float(deadline)


def _check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise InvalidInputError(f"split must be 'train' or 'test', got {split!r}")


def mnist(
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    *,
    flatten: bool = True,
    as_float: bool = False,
    mirrors: list[str] | None = None,
    progress: bool = False,
    deadline: float = DEADLINE,
) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of the full MNIST ``split``.

    images: uint8 (n, 784) (or (n, 28, 28) with ``flatten=False``; float32 in [0, 1] with
    ``as_float=True``); labels: int64 (n,) in 0..9. n is 60,000 for "train", 10,000 for "test".
    A download gives up on a mirror after ``deadline`` seconds per file and tries the next.
    """
    _check_split(split)
    deadline = check_deadline(deadline)
    images, labels = (
        mnist_file(FILES[split, kind], data_dir, download, mirrors, progress, deadline)
        for kind in ("images", "labels")
    )
    return _finish(images, labels, flatten, as_float)


def mnist_sample(
    split: str = "train", *, flatten: bool = True, as_float: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """The sample shipped in the package: the first 5,000 train / 1,000 test images of MNIST."""
    _check_split(split)
    sums = dict(line.split()[::-1] for line in (SAMPLE_DIR / "SHA256SUMS").read_text().splitlines())
    arrays = []
    for kind in ("images", "labels"):
        name = FILES[split, kind]
        arrays.append(read_idx(SAMPLE_DIR / (name + ".gz"), sha256=sums[name]))
    return _finish(*arrays, flatten, as_float)


def load_mnist(
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    progress: bool = False,
    *,
    train: bool = True,
    deadline: float = DEADLINE,
):
    """(train, test, source): full MNIST if it can be found or downloaded, else the sample;
    with ``train=False`` only the test split is read (train is None).

    Falling back to the sample warns loudly, and ``source`` says which one was loaded. A file
    that exists but is damaged is an error, never a reason to fall back.
    """
    splits = ("train", "test") if train else ("test",)
    try:
        data = [mnist(s, data_dir, download, progress=progress, deadline=deadline) for s in splits]
        source = "MNIST"
    except MnistUnavailableError as exc:
        warnings.warn(f"full MNIST unavailable ({exc}); using the {SAMPLE_NAME}", stacklevel=2)
        data, source = [mnist_sample(s) for s in splits], SAMPLE_NAME
    return (data[0] if train else None), data[-1], source


__all__ = [
    "MnistUnavailableError",
    "load_mnist",
    "mnist",
    "mnist_sample",
    "parse_idx",
    "read_bytes",
    "read_idx",
]
