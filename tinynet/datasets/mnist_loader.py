"""MNIST: found on disk or downloaded with checksums, and a small sample shipped in the package.

Where ``mnist()`` looks, in order: ``data_dir``, ``$TINYNET_DATA_DIR``, ``~/.cache/tinynet/mnist``
(``$XDG_CACHE_HOME/tinynet/mnist`` when that is set); each file may be raw or ``.gz``. If a file is
in none of them it is downloaded from the mirrors (``mirrors=``, or ``$TINYNET_MNIST_MIRRORS`` as a
comma-separated list) into the cache. Every file, found or downloaded, must match the SHA-256 of
the canonical decompressed file, so recompressed copies pass and damaged ones do not.

MNIST (LeCun, Cortes, Burges) is licensed CC BY-SA 3.0; credit Yann LeCun and Corinna Cortes.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from tinynet.datasets.idx import parse_idx, read_bytes, read_idx
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
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
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


def _fetch(url: str, timeout: float, progress: bool) -> bytes:
    """The body at ``url``; raises on HTTP errors and on a body shorter than announced."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        size = int(response.headers.get("Content-Length") or 0)
        chunks = []
        with tqdm(
            total=size or None,
            unit="B",
            unit_scale=True,
            disable=not progress,
            desc=url.rsplit("/", 1)[-1],
            leave=False,
        ) as bar:
            while chunk := response.read(1 << 16):
                chunks.append(chunk)
                bar.update(len(chunk))
    body = b"".join(chunks)
    if size and len(body) != size:
        raise http.client.IncompleteRead(body, size - len(body))
    return body


def download(
    name: str, target_dir: Path, mirrors: list[str], timeout: float = 30.0, progress: bool = False
) -> Path:
    """Fetch ``name``.gz from the first mirror whose copy passes the checksum; save atomically."""
    failures = []
    for mirror in mirrors:
        url = mirror + name + ".gz"
        try:
            body = _fetch(url, timeout, progress)
            payload = gzip.decompress(body) if body[:2] == b"\x1f\x8b" else body
        except (urllib.error.URLError, http.client.HTTPException, OSError, EOFError) as exc:
            failures.append(f"{url}: {exc}")
            continue
        digest = hashlib.sha256(payload).hexdigest()
        if digest != SHA256[name]:
            failures.append(f"{url}: checksum mismatch (got {digest[:12]}...)")
            continue
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / (name + ".gz")
        fd, tmp = tempfile.mkstemp(dir=target_dir, prefix=".download-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(body if body[:2] == b"\x1f\x8b" else gzip.compress(body))
            os.replace(tmp, target)
        except BaseException:
            os.unlink(tmp)
            raise
        return target
    raise DataFileError(f"could not download {name}: " + "; ".join(failures))


def mnist_file(
    name: str,
    data_dir: str | os.PathLike | None = None,
    download_: bool = True,
    mirrors: list[str] | None = None,
    progress: bool = False,
) -> np.ndarray:
    """One verified MNIST file as an array (see the module docstring for where it comes from)."""
    dirs = search_dirs(data_dir)
    path = _find(name, dirs)
    if path is None:
        if not download_:
            raise DataFileError(
                f"MNIST file {name} not found in {', '.join(map(str, dirs))}; "
                "set TINYNET_DATA_DIR or allow downloading"
            )
        path = download(name, cache_dir(), mirror_list(mirrors), progress=progress)
    return read_idx(path, sha256=SHA256[name])


def _finish(images: np.ndarray, labels: np.ndarray, flatten: bool, as_float: bool):
    if len(images) != len(labels):
        raise DataFileError(f"{len(images)} images but {len(labels)} labels")
    if flatten:
        images = images.reshape(len(images), -1)
    if as_float:
        images = images.astype(np.float32) / np.float32(255)
    return images, labels.astype(np.int64)


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
) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of the full MNIST ``split``.

    images: uint8 (n, 784) (or (n, 28, 28) with ``flatten=False``; float32 in [0, 1] with
    ``as_float=True``); labels: int64 (n,) in 0..9. n is 60,000 for "train", 10,000 for "test".
    """
    _check_split(split)
    images = mnist_file(FILES[split, "images"], data_dir, download, mirrors, progress)
    labels = mnist_file(FILES[split, "labels"], data_dir, download, mirrors, progress)
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
    data_dir: str | os.PathLike | None = None, download: bool = True, progress: bool = False
):
    """(train, test, source): full MNIST if it can be found or downloaded, else the sample.

    Falling back to the sample warns loudly, and ``source`` says which one was loaded. A file
    that exists but is damaged is an error, never a reason to fall back.
    """
    try:
        train = mnist("train", data_dir, download, progress=progress)
        test = mnist("test", data_dir, download, progress=progress)
        return train, test, "MNIST"
    except DataFileError as exc:
        if "not found" not in str(exc) and "could not download" not in str(exc):
            raise
        warnings.warn(f"full MNIST unavailable ({exc}); using the {SAMPLE_NAME}", stacklevel=2)
        return mnist_sample("train"), mnist_sample("test"), SAMPLE_NAME


__all__ = ["load_mnist", "mnist", "mnist_sample", "parse_idx", "read_bytes", "read_idx"]
