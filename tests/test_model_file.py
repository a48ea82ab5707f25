"""Model files under fault: hostile or damaged files for ``load``, and for ``save`` permissions,
symlinks, kills, full disks and missing folders; a diverged model is never saved over a good
file. Hostile files are written here by hand (zipfile, numpy.lib.format), not by ``save``."""

from __future__ import annotations

import io
import json
import os
import signal
import stat
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

import tinynet as tn
from tests.faults import clean_env
from tinynet.cli import main

FORMAT = "tinynet-mlp-v1"


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _npy_header_only(shape: tuple[int, ...], dtype: str = "<f4", body: bytes = b"") -> bytes:
    """A .npy member whose header declares ``shape`` but which holds only ``body``."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": dtype, "fortran_order": False, "shape": shape}
    )
    return buffer.getvalue() + body  # the header (magic included), then only ``body``


def _archive(path: Path, members: dict[str, bytes], deflated: tuple[str, ...] = ()) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            kind = zipfile.ZIP_DEFLATED if name in deflated else zipfile.ZIP_STORED
            zf.writestr(name + ".npy", data, compress_type=kind)
    return path


def _dense(n_in: int, n_out: int, bias: bool = True) -> dict:
    return {
        "type": "Dense",
        "in_features": n_in,
        "out_features": n_out,
        "activation": "sigmoid",
        "bias": bias,
        "init": "auto",
        "dtype": "float32",
    }


def _model_members(config, weights: dict[str, np.ndarray]) -> dict[str, bytes]:
    text = config if isinstance(config, str) else json.dumps(config)
    return {
        "__format__": _npy(np.array(FORMAT)),
        "__config__": _npy(np.array(text)),
        **{k: _npy(v) for k, v in weights.items()},
    }


GOOD = {"0.weight": np.ones((3, 2), np.float32), "0.bias": np.zeros(3, np.float32)}


def test_a_hand_written_model_file_loads(tmp_path):
    # the reader's view of the format, checked on a file written without `save`
    path = _archive(tmp_path / "good.npz", _model_members([_dense(2, 3)], GOOD))
    net = tn.load(path)
    np.testing.assert_array_equal(net.get_weights()[0][0], np.ones((3, 2)))


@pytest.mark.parametrize(
    ("case", "says"),
    [
        ("plain-npy", "not a zip"),
        ("missing-key", r"has keys \['activation'\], expected \['activation', 'bias'"),
        ("config-is-object", "not a list of layers"),
        ("layer-is-number", "not a Dense or Rescaling"),
        ("wrong-value-type", "in_features = '2' has the wrong type"),
        ("bool-as-size", "in_features = True has the wrong type"),
        ("deeply-nested", "nested too deeply"),
        ("not-json", "not JSON"),
        ("bad-activation", "unknown activation"),
        ("missing-weight", "member '0.weight' is missing"),
        ("wrong-shape", r"shape \(2, 3\), the config needs \(3, 2\)"),
        ("int-weights", "not floats"),
        ("config-not-string", "'__config__' is not a string"),
        ("alpha-on-relu", "activation 'relu' takes none"),
        ("alpha-not-a-number", "alpha = '0.1' has the wrong type"),
        ("alpha-negative", "finite alpha >= 0"),
    ],
)
def test_a_bad_model_file_is_a_model_file_error_naming_it(tmp_path, case, says):
    path = tmp_path / f"{case}.npz"
    dense = _dense(2, 3)
    members = {
        "plain-npy": None,
        "missing-key": _model_members([{"type": "Dense", "activation": "relu"}], GOOD),
        "config-is-object": _model_members({"layers": []}, GOOD),
        "layer-is-number": _model_members([1, 2], GOOD),
        "wrong-value-type": _model_members([{**dense, "in_features": "2"}], GOOD),
        "bool-as-size": _model_members([{**dense, "in_features": True}], GOOD),
        "deeply-nested": _model_members("[" * 100_000 + "]" * 100_000, GOOD),
        "not-json": _model_members("{oops", GOOD),
        "bad-activation": _model_members([{**dense, "activation": "swish"}], GOOD),
        "missing-weight": _model_members([dense], {"0.bias": GOOD["0.bias"]}),
        "wrong-shape": _model_members([dense], {**GOOD, "0.weight": np.ones((2, 3), "f4")}),
        "int-weights": _model_members([dense], {**GOOD, "0.weight": np.ones((3, 2), int)}),
        "config-not-string": {**_model_members([dense], GOOD), "__config__": _npy(np.ones(3))},
        "alpha-on-relu": _model_members([{**dense, "activation": "relu", "alpha": 0.1}], GOOD),
        "alpha-not-a-number": _model_members(
            [{**dense, "activation": "leaky_relu", "alpha": "0.1"}], GOOD
        ),
        "alpha-negative": _model_members(
            [{**dense, "activation": "leaky_relu", "alpha": -1.0}], GOOD
        ),
    }[case]
    if members is None:
        np.save(path, np.ones((3, 2)))
        path = tmp_path / f"{case}.npz.npy"
    else:
        _archive(path, members)
    with pytest.raises(tn.ModelFileError, match=says) as info:
        tn.load(path)
    assert str(path) in str(info.value)


def test_evaluate_on_a_plain_npy_is_one_line(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.ones(3))
    assert main(["evaluate", str(tmp_path / "x.npy"), "--sample"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tinynet: error: not a tinynet model file") and "x.npy" in err
    assert len(err.splitlines()) == 1


def _peak_while(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_config_declaring_a_huge_layer_allocates_nothing(tmp_path):
    # Dense(200000, 200000) would be 160 GB of float32; the file holds 3 x 2 weights
    path = _archive(tmp_path / "huge.npz", _model_members([_dense(200_000, 200_000)], GOOD))

    def load():
        with pytest.raises(tn.ModelFileError, match=r"huge\.npz.*shape \(3, 2\)"):
            tn.load(path)

    assert _peak_while(load) < 8 << 20


def test_an_npy_header_declaring_2_to_the_34_floats_allocates_nothing(tmp_path):
    n = 1 << 17  # a (2^17, 2^17) weight matrix: 2^34 floats, 64 GiB
    members = _model_members([_dense(n, n, bias=False)], {})
    members["0.weight"] = _npy_header_only((n, n), body=bytes(16))
    path = _archive(tmp_path / "liar.npz", members)

    def load():
        # refused on its sizes, before a byte of the data is read
        with pytest.raises(tn.ModelFileError, match=r"liar\.npz.*'0\.weight' is [\d,]+ bytes"):
            tn.load(path)

    assert _peak_while(load) < 8 << 20


def test_a_deflate_bomb_member_the_model_does_not_need_is_never_read(tmp_path):
    path = _archive(tmp_path / "bomb.npz", _model_members([_dense(2, 3)], GOOD))
    # a member of 256 MiB of zeros, deflated to about 250 KB
    with (
        zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as zf,
        zf.open("junk.npy", "w", force_zip64=True) as member,
    ):
        member.write(_npy_header_only((256 << 20,), "|u1"))
        zeros = bytes(16 << 20)
        for _ in range(16):
            member.write(zeros)
    assert path.stat().st_size < 2 << 20
    net = None

    def load():
        nonlocal net
        net = tn.load(path)

    assert _peak_while(load) < 16 << 20
    np.testing.assert_array_equal(net.get_weights()[0][0], np.ones((3, 2)))


@pytest.mark.parametrize("kind", ["stored", "deflated"])
def test_a_member_whose_zip_entry_claims_more_bytes_than_the_file_holds(tmp_path, kind):
    """The weights the model reads, stored or deflated, claiming 2 GiB: refused from the zip
    entry alone (a deflated one by deflate's best ratio), before any of it is read."""
    # zipfile writes honest sizes: forge the central directory's uncompressed size by hand
    deflated = ("0.weight",) if kind == "deflated" else ()
    members = _model_members([_dense(2, 3)], GOOD)
    path = _archive(tmp_path / "forged.npz", members, deflated)
    data = bytearray(path.read_bytes())
    name = b"0.weight.npy"
    entry = data.index(b"PK\x01\x02")  # central directory entries, in member order
    while data[entry + 46 : entry + 46 + len(name)] != name:
        entry = data.index(b"PK\x01\x02", entry + 4)
    data[entry + 24 : entry + 28] = (1 << 31).to_bytes(4, "little")  # uncompressed size: 2 GiB
    path.write_bytes(bytes(data))
    with pytest.raises(tn.ModelFileError, match=r"forged\.npz.*'0\.weight' claims 2,147,483,648"):
        tn.load(path)


# -- save -----------------------------------------------------------------------------------
def _net(seed: int = 0) -> tn.MLP:
    return tn.MLP.from_sizes([2, 3, 1], "tanh", "sigmoid", seed=seed)


def test_save_keeps_an_existing_files_mode_and_gives_a_new_one_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        _net().save(tmp_path / "new.npz")
        assert stat.S_IMODE((tmp_path / "new.npz").stat().st_mode) == 0o640  # 0666 & ~027
        (tmp_path / "new.npz").chmod(0o604)
        _net(1).save(tmp_path / "new.npz")
        assert stat.S_IMODE((tmp_path / "new.npz").stat().st_mode) == 0o604
    finally:
        os.umask(old)


def test_save_writes_through_a_symlink(tmp_path):
    (tmp_path / "models").mkdir()
    target = tmp_path / "models" / "real.npz"
    _net(0).save(target)
    link = tmp_path / "latest.npz"
    link.symlink_to(target)
    _net(1).save(link)
    assert link.is_symlink() and os.readlink(link) == str(target)
    np.testing.assert_array_equal(tn.load(target).get_weights()[0][0], _net(1).get_weights()[0][0])
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["real.npz"]


# A child that saves, and is killed by SIGKILL in the middle of writing the temp file.
KILLED_MID_SAVE = """
import os, signal, sys, numpy as np, tinynet as tn
net = tn.MLP.from_sizes([2, 3, 1], "tanh", "sigmoid", seed=1)
def half_then_die(f, **arrays):
    f.write(b"PK\\x03\\x04 half a model")
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
np.savez = half_then_die
net.save(sys.argv[1])
"""


def test_a_killed_save_keeps_the_old_file_and_the_next_save_tidies_up(tmp_path):
    path = tmp_path / "m.npz"
    _net(0).save(path)
    done = subprocess.run(
        [sys.executable, "-c", KILLED_MID_SAVE, str(path)], env=clean_env(), timeout=120
    )
    assert done.returncode == -signal.SIGKILL
    leftovers = list(tmp_path.glob(".tinynet-*.tmp"))
    assert len(leftovers) == 1
    np.testing.assert_array_equal(tn.load(path).get_weights()[0][0], _net(0).get_weights()[0][0])
    _net(2).save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]


def test_a_temp_file_older_than_a_day_is_removed_even_if_its_process_lives(tmp_path):
    # another host's save to a shared folder: its pid means nothing here, its age does
    old = tmp_path / f".tinynet-{os.getpid()}-elsewhere.tmp"
    old.write_bytes(b"left two days ago")
    two_days_ago = old.stat().st_mtime - 2 * 86400
    os.utime(old, (two_days_ago, two_days_ago))
    _net().save(tmp_path / "m.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]


def test_a_temp_file_of_a_live_save_is_left_alone(tmp_path):
    mine = tmp_path / f".tinynet-{os.getpid()}-abc.tmp"  # this process is alive
    mine.write_bytes(b"in progress")
    _net().save(tmp_path / "m.npz")
    assert mine.exists()


def test_save_into_a_missing_folder_or_onto_a_directory_is_a_model_file_error(tmp_path):
    with pytest.raises(tn.ModelFileError, match=r"no/m\.npz.*does not exist"):
        _net().save(tmp_path / "no" / "m.npz")
    (tmp_path / "dir.npz").mkdir()
    with pytest.raises(tn.ModelFileError, match=r"dir\.npz.*is a directory"):
        _net().save(tmp_path / "dir.npz")


# A child whose files may not grow past 4 KB (as on a full disk) saves a 200 KB model.
FULL_DISK = """
import resource, signal, sys, tinynet as tn
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
net = tn.MLP.from_sizes([200, 250, 1], "tanh", "sigmoid", seed=1)
try:
    net.save(sys.argv[1])
except tn.ModelFileError as exc:
    print(exc)
    sys.exit(3)
"""


def test_a_full_disk_is_a_model_file_error_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "m.npz"
    _net(0).save(path)
    done = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(path)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 3, done.stderr
    assert "cannot save the model to" in done.stdout and "unchanged" in done.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]
    np.testing.assert_array_equal(tn.load(path).get_weights()[0][0], _net(0).get_weights()[0][0])


# -- divergence -----------------------------------------------------------------------------
def _flat(net: tn.MLP) -> list[np.ndarray]:
    return [w for pair in net.get_weights() for w in pair if w is not None]


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid:RuntimeWarning")
@pytest.mark.parametrize("lr", [10.0, 1e4])
def test_after_divergence_the_weights_are_those_before_the_diverging_epoch(
    tmp_path, backend_name, lr
):
    x = np.array([[1e3, -1e3], [2e3, 1e3]])
    t = np.array([1e3, -1e3])

    def run(epochs: int) -> tn.MLP:
        net = tn.MLP.from_sizes([2, 8, 1], "relu", None, seed=0)
        net.fit(x, t, tn.SquaredError(), tn.SGD(lr, momentum=0.5), epochs=epochs, seed=0)
        return net

    net = tn.MLP.from_sizes([2, 8, 1], "relu", None, seed=0)
    with pytest.raises(tn.InvalidInputError, match="diverged.*back to what") as info:
        net.fit(x, t, tn.SquaredError(), tn.SGD(lr, momentum=0.5), epochs=5, seed=0)
    bad_epoch = int(info.value.args[0].split("epoch ")[1].split(":")[0])
    # the same run stopped one epoch earlier (or the untrained net) is what must be left
    twin = (
        run(bad_epoch - 1) if bad_epoch > 1 else tn.MLP.from_sizes([2, 8, 1], "relu", None, seed=0)
    )
    for a, b in zip(_flat(net), _flat(twin), strict=True):
        np.testing.assert_array_equal(a, b)
    assert all(np.isfinite(w).all() for w in _flat(net))
    net.save(tmp_path / "m.npz")  # a finite model saves


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid:RuntimeWarning")
def test_an_update_that_overflows_with_a_finite_loss_is_divergence_too(backend_name):
    """One sample, one step: the loss (of the weights before the step) is finite, 6.5, but
    lr = 1e38 times the gradient overflows float32 in the update. The run must fail as
    diverged and leave the weights it started with, not keep inf weights."""
    x, t = np.array([[1.0, -2.0]]), np.array([3.0])
    net = tn.MLP.from_sizes([2, 4, 1], "relu", None, seed=0)
    before = _flat(net)
    with pytest.raises(tn.InvalidInputError, match="epoch 1: a weight overflowed to inf or NaN"):
        net.fit(x, t, tn.SquaredError(), tn.SGD(1e38), epochs=1, seed=0)
    for a, b in zip(_flat(net), before, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_model_with_nan_weights_is_never_saved_over_a_good_file(tmp_path):
    path = tmp_path / "m.npz"
    _net(0).save(path)
    original = path.read_bytes()
    net = _net(1)
    net.layers[0].weight.data[0, 0] = np.nan  # what a diverged step leaves
    with pytest.raises(tn.InvalidInputError, match=r"NaN or inf.*not saved.*m\.npz is unchanged"):
        net.save(path)
    assert path.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]
