"""MNIST: lookup order, checksums, downloads from a local HTTP server, the sample, end to end."""

from __future__ import annotations

import gzip
import shutil
import threading
import time
import tracemalloc
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

import tinynet as tn
from tinynet.datasets import mnist_loader as mnist_module

LABELS = "t10k-labels-idx1-ubyte"


@pytest.fixture
def no_data_anywhere(tmp_path, monkeypatch):
    """No TINYNET_DATA_DIR and an empty cache; returns the cache folder."""
    monkeypatch.delenv("TINYNET_DATA_DIR", raising=False)
    monkeypatch.delenv("TINYNET_MNIST_MIRRORS", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "tinynet" / "mnist"


def gzip_bomb(header: bytes, inflated: int) -> bytes:
    """A gzip stream of ``header`` followed by zeros up to ``inflated`` bytes (~1000:1)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    parts, zeros = [packer.compress(header)], bytes(16 << 20)
    for _ in range(inflated // len(zeros)):
        parts.append(packer.compress(zeros))
    return b"".join([*parts, packer.flush()])


# The t10k labels' real header (10,000 labels) and 64 MiB of zeros: 62 KB of gzip, less than
# the real file could take uncompressed, so only inflating it shows what it is.
LABELS_BOMB = gzip_bomb(b"\x00\x00\x08\x01" + (10_000).to_bytes(4, "big"), 64 << 20)
KINDS = ("good", "corrupt", "drop", "missing", "bad-deflate", "trickle", "bomb", "huge", "endless")


@pytest.fixture
def mirrors(mnist_dir):
    """A local server: /good/ serves the real files, /corrupt/ valid gzip with a flipped byte,
    /drop/ closes the connection halfway through, /missing/ answers 404, /bad-deflate/ a gzip
    header followed by bytes that are not deflate data, /trickle/ the real file one byte per
    20 ms, /bomb/ a 62 KB gzip that inflates to 64 MiB."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            kind, name = self.path.strip("/").split("/", 1)
            source = mnist_dir / name
            if kind == "missing" or not source.exists():
                self.send_error(404)
                return
            body = source.read_bytes()
            if kind == "corrupt":
                payload = bytearray(gzip.decompress(body))
                payload[-1] ^= 0x01
                body = gzip.compress(bytes(payload))
            elif kind == "bad-deflate":
                body = body[:10] + bytes(range(256)) * 8
            elif kind == "bomb":
                body = LABELS_BOMB
            elif kind in ("huge", "endless"):  # far longer than the raw file (10,008 bytes)
                body = body + bytes(1 << 20)
            self.send_response(200)
            if kind != "endless":  # endless: no length, the body runs until the close
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if kind == "trickle":
                for i in range(len(body)):
                    self.wfile.write(body[i : i + 1])
                    self.wfile.flush()
                    time.sleep(0.02)
                return
            if kind == "drop":
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads, server.block_on_close = True, False  # a trickle outlives its client
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    yield {kind: f"{base}/{kind}/" for kind in KINDS}
    server.shutdown()
    server.server_close()


def test_download_skips_dropped_and_corrupt_mirrors(mirrors, mnist_dir, no_data_anywhere):
    order = [mirrors["drop"], mirrors["corrupt"], mirrors["missing"], mirrors["good"]]
    labels = mnist_module.mnist_file(LABELS, mirrors=order)
    expected = tn.datasets.read_idx(mnist_dir / (LABELS + ".gz"))
    np.testing.assert_array_equal(labels, expected)
    assert (no_data_anywhere / (LABELS + ".gz")).is_file()
    assert [p.name for p in no_data_anywhere.iterdir()] == [LABELS + ".gz"]  # no temp files
    # now cached: found without any mirror
    np.testing.assert_array_equal(mnist_module.mnist_file(LABELS, mirrors=[]), expected)


def test_download_fails_clearly_when_no_mirror_is_good(mirrors, no_data_anywhere):
    with pytest.raises(tn.DataFileError) as info:
        mnist_module.mnist_file(LABELS, mirrors=[mirrors["drop"], mirrors["corrupt"]])
    message = str(info.value)
    assert "could not download t10k-labels" in message
    assert "IncompleteRead" in message or "incomplete" in message.lower()
    assert "checksum mismatch" in message
    assert not no_data_anywhere.exists() or not any(no_data_anywhere.iterdir())


def test_a_mirror_serving_bad_deflate_data_moves_on_to_the_next(mirrors, no_data_anywhere):
    labels = mnist_module.mnist_file(LABELS, mirrors=[mirrors["bad-deflate"], mirrors["good"]])
    assert labels[0] == 7 and labels.shape == (10_000,)
    (no_data_anywhere / (LABELS + ".gz")).unlink()
    with pytest.raises(tn.DataFileError, match=r"bad-deflate/t10k-labels.*corrupt"):
        mnist_module.mnist_file(LABELS, mirrors=[mirrors["bad-deflate"]])


def test_a_trickling_mirror_is_abandoned_at_the_deadline(mirrors, no_data_anywhere):
    # The labels (4.5 KB gzip) at one byte per 20 ms would take about 90 s: the trickling
    # mirror is given up (the error says at the deadline) and the next one serves the file.
    with pytest.raises(tn.DataFileError, match=r"trickle.*gave up after 1 s"):
        mnist_module.mnist_file(LABELS, mirrors=[mirrors["trickle"]], deadline=1.0)
    labels = mnist_module.mnist_file(
        LABELS, mirrors=[mirrors["trickle"], mirrors["good"]], deadline=1.0
    )
    assert labels[0] == 7


def test_a_gzip_bomb_from_a_mirror_is_never_inflated_whole(mirrors, no_data_anywhere):
    tracemalloc.start()
    try:
        labels = mnist_module.mnist_file(LABELS, mirrors=[mirrors["bomb"], mirrors["good"]])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert labels[0] == 7
    assert peak < 16 << 20, f"peak {peak / 2**20:.0f} MiB while reading a 64 MiB bomb"
    (no_data_anywhere / (LABELS + ".gz")).unlink()
    with pytest.raises(tn.DataFileError, match=r"bomb/t10k-labels.*oversized"):
        mnist_module.mnist_file(LABELS, mirrors=[mirrors["bomb"]])


@pytest.mark.parametrize("where", ["read_idx", "mnist"])
def test_a_gzip_bomb_on_disk_stops_at_the_declared_size(
    tmp_path, mnist_dir, no_data_anywhere, where
):
    shutil.copy(mnist_dir / "t10k-images-idx3-ubyte.gz", tmp_path)
    (tmp_path / (LABELS + ".gz")).write_bytes(LABELS_BOMB)
    tracemalloc.start()
    try:
        with pytest.raises(tn.DataFileError, match=r"oversized.*t10k-labels.*10,008 bytes"):
            if where == "read_idx":
                tn.datasets.read_idx(tmp_path / (LABELS + ".gz"))
            else:
                tn.datasets.mnist("test", data_dir=tmp_path, download=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the mnist case also reads the real 7.8 MB of images
    limit = (16 if where == "read_idx" else 32) << 20
    assert peak < limit, f"peak {peak / 2**20:.0f} MiB while reading a 64 MiB bomb"


@pytest.mark.parametrize(("kind", "says"), [("huge", "announces"), ("endless", "sent more than")])
def test_a_mirror_sending_more_than_the_file_can_hold_moves_on(
    mirrors, no_data_anywhere, kind, says
):
    labels = mnist_module.mnist_file(LABELS, mirrors=[mirrors[kind], mirrors["good"]])
    assert labels[0] == 7
    (no_data_anywhere / (LABELS + ".gz")).unlink()
    with pytest.raises(tn.DataFileError, match=rf"{kind}/t10k-labels.*{says}"):
        mnist_module.mnist_file(LABELS, mirrors=[mirrors[kind]])


def test_offline_error_says_what_to_do(no_data_anywhere):
    with pytest.raises(tn.DataFileError) as info:
        tn.datasets.mnist("train", mirrors=["http://127.0.0.1:9/"])
    message = str(info.value)
    assert "TINYNET_DATA_DIR" in message and "data_dir=" in message
    assert "mnist_sample" in message


def test_full_split_downloads_through_the_mirror_env_var(mirrors, no_data_anywhere, monkeypatch):
    monkeypatch.setenv("TINYNET_MNIST_MIRRORS", f"{mirrors['missing']},{mirrors['good']}")
    images, labels = tn.datasets.mnist("test")
    assert images.shape == (10_000, 784) and images.dtype == np.uint8
    assert labels.shape == (10_000,) and labels[0] == 7  # the first test digit is a 7


def test_lookup_order_data_dir_then_env_then_cache(
    mnist_dir, no_data_anywhere, tmp_path, monkeypatch
):
    good = mnist_dir / (LABELS + ".gz")
    corrupt_payload = bytearray(gzip.decompress(good.read_bytes()))
    corrupt_payload[100] ^= 0xFF
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    (bad_dir / LABELS).write_bytes(bytes(corrupt_payload))  # raw, not .gz
    no_data_anywhere.mkdir(parents=True)
    shutil.copy(good, no_data_anywhere / good.name)

    # cache only
    assert mnist_module.mnist_file(LABELS, download_=False)[0] == 7
    # the environment comes before the cache
    monkeypatch.setenv("TINYNET_DATA_DIR", str(bad_dir))
    with pytest.raises(tn.DataFileError, match=f"checksum mismatch for {bad_dir}"):
        mnist_module.mnist_file(LABELS, download_=False)
    # data_dir comes before the environment
    monkeypatch.setenv("TINYNET_DATA_DIR", str(no_data_anywhere))
    with pytest.raises(tn.DataFileError, match=f"checksum mismatch for {bad_dir}"):
        mnist_module.mnist_file(LABELS, data_dir=bad_dir, download_=False)
    assert mnist_module.mnist_file(LABELS, data_dir=mnist_dir, download_=False)[0] == 7


def test_missing_files_without_download(no_data_anywhere, tmp_path):
    with pytest.raises(tn.DataFileError, match="not found in .*cache"):
        tn.datasets.mnist("train", data_dir=tmp_path, download=False)
    with pytest.raises(tn.InvalidInputError, match="split"):
        tn.datasets.mnist("validation")


def test_falls_back_to_the_sample_loudly(no_data_anywhere, monkeypatch):
    monkeypatch.setenv("TINYNET_MNIST_MIRRORS", "http://127.0.0.1:9/")  # nothing listens there
    with pytest.warns(UserWarning, match="full MNIST unavailable.*NOT the full MNIST"):
        (x, _y), (xt, _yt), source = tn.datasets.load_mnist()
    assert "NOT the full MNIST" in source and "sample" in source
    assert x.shape == (5000, 784) and xt.shape == (1000, 784)


def test_a_damaged_file_is_an_error_not_a_fallback(tmp_path, no_data_anywhere):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03garbage")
    with pytest.raises(tn.DataFileError, match="train-images"):
        tn.datasets.load_mnist(tmp_path, download=False)


def test_sample_matches_the_head_of_full_mnist(mnist_dir):
    full_x, full_y = tn.datasets.mnist("train", data_dir=mnist_dir, download=False)
    x, y = tn.datasets.mnist_sample("train")
    np.testing.assert_array_equal(x, full_x[:5000])
    np.testing.assert_array_equal(y, full_y[:5000])
    test_x, _ = tn.datasets.mnist_sample("test", flatten=False, as_float=True)
    assert test_x.shape == (1000, 28, 28) and test_x.dtype == np.float32
    assert test_x.min() == 0.0 and test_x.max() == 1.0


def test_sample_ships_its_licence_credit():
    credit = (mnist_module.SAMPLE_DIR / "README.md").read_text()
    assert "CC BY-SA 3.0" in credit and "LeCun" in credit and "Cortes" in credit


def test_train_on_the_embedded_sample(backend_name):
    (x, y), (xt, yt) = tn.datasets.mnist_sample("train"), tn.datasets.mnist_sample("test")
    net = tn.MLP.from_sizes([784, 64, 10], "relu", "softmax", seed=0, rescale=(1 / 255, 0))
    history = net.fit(
        x, y, tn.CrossEntropy(), tn.SGD(0.1, momentum=0.9), epochs=3, batch_size=32, seed=0
    )
    assert history["loss"][-1] < history["loss"][0]
    assert net.evaluate(xt, yt)["accuracy"] > 0.88


def test_full_mnist_end_to_end(mnist_dir, backend_name):
    (x, y) = tn.datasets.mnist("train", data_dir=mnist_dir, download=False)
    (xt, yt) = tn.datasets.mnist("test", data_dir=mnist_dir, download=False)
    assert x.shape == (60_000, 784) and x.dtype == np.uint8 and y[0] == 5
    assert np.bincount(y).tolist()[:2] == [5923, 6742]  # the known class counts of 0 and 1
    net = tn.MLP.from_sizes([784, 128, 10], "relu", "softmax", seed=0, rescale=(1 / 255, 0))
    net.fit(x, y, tn.CrossEntropy(), tn.SGD(0.05, momentum=0.9), epochs=1, batch_size=64, seed=0)
    assert net.evaluate(xt, yt)["accuracy"] > 0.95


def test_sample_folder_is_small():
    size = sum(p.stat().st_size for p in Path(mnist_module.SAMPLE_DIR).iterdir())
    assert size <= 1_000_000


@pytest.mark.parametrize("deadline", [0, -1.0, float("nan"), "60", True])
def test_a_deadline_that_is_not_a_positive_number_is_refused(no_data_anywhere, deadline):
    with pytest.raises(tn.InvalidInputError, match="download deadline must be a positive"):
        tn.datasets.mnist("test", deadline=deadline, mirrors=["http://127.0.0.1:9/"])
