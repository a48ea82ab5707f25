"""Faults and bad input that held-out probes found (issue #23, N9-N18 and the new user's run):
each one now a clear error or a recovery, injected here for real."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import tinynet as tn
from tests.faults import clean_env, cli_in_read_only_folder, python
from tests.faults import one_line_cli_error as _one_line_error
from tinynet.cli import main


@pytest.fixture
def no_data(monkeypatch):
    """Loading data fails the test: these errors must come before it."""

    def refuse(*args, **kwargs):
        raise AssertionError("the data was loaded before the settings were checked")

    monkeypatch.setattr("tinynet.datasets.load_mnist", refuse)
    monkeypatch.setattr("tinynet.datasets.mnist_sample", refuse)


# -- N12, N13: seeds and sizes ----------------------------------------------------------------
def test_a_negative_seed_is_a_clear_error(capsys, no_data):
    _one_line_error(capsys, ["train", "--seed", "-1"], "--seed must be None or an integer >= 0")
    x, y = np.zeros((4, 3)), np.array([0, 1, 0, 1])
    for bad in (-5, 2.5, True, "1"):
        with pytest.raises(tn.InvalidInputError, match="seed must be None or an integer >= 0"):
            tn.MLP.from_sizes([3, 2], seed=bad)
    net = tn.MLP.from_sizes([3, 2], seed=0)
    with pytest.raises(tn.InvalidInputError, match="seed must be"):
        net.fit(x, y, tn.CrossEntropy(), tn.SGD(0.1), seed=-5)
    with pytest.raises(tn.InvalidInputError, match="seed must be"):
        tn.Perceptron(2, seed=-1)


def test_weights_that_cannot_fit_are_refused_before_allocating(capsys, no_data):
    """N13: a billion hidden units, 5.8 TiB of float32 weights and gradients: refused before
    the data loads or NumPy allocates (a MemoryError traceback before)."""
    _one_line_error(
        capsys, ["train", "--hidden", "1000000000"], r"need [\d,.]+ GiB to train", "smaller layers"
    )
    with pytest.raises(tn.InvalidInputError, match="1000000000x784, 10x1000000000 in float64"):
        tn.MLP.from_sizes([784, 10**9, 10], dtype="float64")
    with pytest.raises(tn.InvalidInputError, match="more than this machine's"):
        tn.Dense(10**6, 10**6)


# -- N14, N15: predict's batch size, values beyond float32 --------------------------------------
@pytest.mark.parametrize("bad", [-1, 0, 2.5, True])
def test_predict_refuses_a_batch_size_that_is_not_a_count(bad):
    net = tn.MLP.from_sizes([3, 2], seed=0)
    with pytest.raises(tn.InvalidInputError, match="batch_size must be a positive integer"):
        net.predict(np.ones((5, 3)), batch_size=bad)


def test_finite_values_beyond_float32_are_refused_after_the_cast():
    """N15: 1e39 is finite in float64 and inf in float32: predict returned NaN and set_weights
    stored inf without a word."""
    net = tn.MLP.from_sizes([2, 3, 2], seed=0)
    before = net.get_weights()
    with pytest.raises(tn.InvalidInputError, match="beyond float32's range"):
        net.predict(np.array([[1e39, 0.0]]))
    with pytest.raises(tn.InvalidInputError, match="weights hold values beyond float32's range"):
        net.layers[0].set_weights(np.full((3, 2), -1e39), np.zeros(3))
    with pytest.raises(tn.InvalidInputError, match="bias hold values beyond float32's range"):
        net.layers[0].set_weights(np.zeros((3, 2)), np.full(3, 1e39))
    with pytest.raises(tn.InvalidInputError, match="targets hold values beyond"):
        net.fit(np.zeros((2, 2)), np.full((2, 2), 1e39), tn.SquaredError(), tn.SGD(0.1))
    for (W, b), (W0, b0) in zip(net.get_weights(), before, strict=True):
        np.testing.assert_array_equal(W, W0)
        np.testing.assert_array_equal(b, b0)
    wide = tn.MLP.from_sizes([2, 3, 2], seed=0, dtype="float64")
    assert np.isfinite(wide.predict(np.array([[1e39, 0.0]]))).all()  # float64 holds it


# -- N9, N18: where results go ------------------------------------------------------------------
def test_a_plot_or_save_onto_a_directory_fails_before_training(capsys, tmp_path, no_data):
    (tmp_path / "out").mkdir()
    _one_line_error(capsys, ["train", "--plot", str(tmp_path / "out")], "it is a directory")
    _one_line_error(capsys, ["train", "--save", str(tmp_path / "out")], "it is a directory")
    assert not (tmp_path / "out.png").exists()


def test_a_read_only_folder_fails_before_training(tmp_path):
    """N9: the folder's write permission is tried with a real file before training (as root,
    the child gives up its right to ignore permissions)."""
    folder = tmp_path / "ro"
    argv = ["train", "--sample", "--epochs", "1", "--quiet", "--save", str(folder / "m.npz")]
    done = cli_in_read_only_folder(folder, argv)
    assert done.returncode == 2, done.stderr
    assert re.fullmatch(r"tinynet: error: cannot write the model to .*m\.npz: .*\n", done.stderr)
    assert "epoch" not in done.stdout  # nothing trained
    assert not (folder / "m.npz").exists()


def test_a_save_that_fails_after_training_keeps_the_model(capsys, tmp_path, monkeypatch):
    """N9: the folder disappears while the model trains (an unmounted disk): the model is
    saved in the temp folder, and the error says where."""
    folder = tmp_path / "gone"
    folder.mkdir()
    real_fit = tn.MLP.fit

    def fit_then_lose_the_folder(self, *args, **kwargs):
        history = real_fit(self, *args, **kwargs)
        shutil.rmtree(folder)
        return history

    monkeypatch.setattr(tn.MLP, "fit", fit_then_lose_the_folder)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    argv = ["train", "--sample", "--epochs", "1", "--hidden", "8", "--quiet"]
    err = _one_line_error(capsys, [*argv, "--save", str(folder / "m.npz")], "cannot save")
    (kept,) = re.findall(r"the trained model is saved in (\S+) instead", err)
    assert os.path.dirname(kept) == str(tmp_path)
    net = tn.load(kept)
    assert net.layers[1].out_features == 8


# -- N10, N11, N17: ONNX export -----------------------------------------------------------------
@pytest.fixture
def saved(tmp_path):
    pytest.importorskip("onnx")
    net = tn.MLP.from_sizes([6, 5, 4], seed=0)
    net.save(tmp_path / "m.npz")
    return net, tmp_path / "m.npz"


def _export(*args):
    return subprocess.run(
        [sys.executable, "-m", "tinynet.cli", "export", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_exporting_onto_the_model_itself_is_refused(saved):
    """N11: `tinynet export m.npz m.npz` overwrote the model with the ONNX file."""
    _, path = saved
    before = path.read_bytes()
    done = _export(path, path)
    assert done.returncode == 2
    assert "is the model file itself" in done.stderr and "Traceback" not in done.stderr
    assert path.read_bytes() == before


@pytest.mark.parametrize("where", ["missing-folder", "directory", "dangling-link"])
def test_export_into_a_place_it_cannot_write_is_one_line(saved, where):
    """N10: the same atomic writer and errors as save."""
    net, path = saved
    folder = path.parent
    target = {
        "missing-folder": folder / "no" / "m.onnx",
        "directory": folder,
        "dangling-link": folder / "link.onnx",
    }[where]
    if where == "dangling-link":
        target.symlink_to(folder / "no" / "where.onnx")
    with pytest.raises(tn.ModelFileError, match=r"cannot save the ONNX model to"):
        net.to_onnx(target)
    done = _export(path, target)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("tinynet: error: cannot save the ONNX model to")
    assert "Traceback" not in done.stderr


def test_export_into_a_read_only_folder_is_one_line(saved, tmp_path):
    _, path = saved
    folder = tmp_path / "ro"
    done = cli_in_read_only_folder(folder, ["export", str(path), str(folder / "m.onnx")])
    assert done.returncode == 2, done.stderr
    assert re.fullmatch(r"tinynet: error: cannot save the ONNX model to .*\n", done.stderr)


def test_a_float64_model_beyond_float32_is_not_exported_as_inf(tmp_path):
    """N17: ONNX holds float32 weights; 1e39 would be inf there."""
    pytest.importorskip("onnx")
    net = tn.MLP.from_sizes([2, 3, 2], seed=0, dtype="float64")
    W, b = net.layers[0].get_weights()
    W[0, 0] = 1e39
    net.layers[0].set_weights(W, b)
    with pytest.raises(tn.InvalidInputError, match="W0: it holds values beyond float32's range"):
        net.to_onnx(tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


# -- the new user's run -------------------------------------------------------------------------
def test_a_data_dir_that_does_not_exist_is_an_error_not_a_fallback(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("TINYNET_DATA_DIR", str(tmp_path))
    _one_line_error(capsys, ["train", "--data-dir", "/typo", "--epochs", "1"], "/typo: no such")
    tn.MLP.from_sizes([784, 10], seed=0).save(tmp_path / "m.npz")
    evaluate = ["evaluate", str(tmp_path / "m.npz"), "--data-dir", "/typo"]
    _one_line_error(capsys, evaluate, "/typo: no such")


def test_resume_says_that_lr_is_not_used_in_one_framed_line(capsys, tmp_path):
    ckpt = tmp_path / "run.ckpt"
    argv = ["train", "--sample", "--hidden", "8", "--quiet", "--checkpoint", str(ckpt)]
    assert main([*argv, "--epochs", "1"]) == 0
    capsys.readouterr()
    assert main([*argv, "--epochs", "2", "--resume", str(ckpt), "--lr", "0.5"]) == 0
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if "--lr" in line]
    assert line.startswith("tinynet: warning: --lr 0.5 is not used")
    assert "RuntimeWarning" not in err and "warnings.warn" not in err


def test_threads_fixes_the_count_on_the_command_line(capsys, monkeypatch, no_data):
    _one_line_error(capsys, ["train", "--threads", "0"], "--threads must be >= 1, got 0")


def test_threads_reaches_every_stretch_of_training(monkeypatch):
    """--threads 1: each stretch the sizer runs is on one thread, whatever the load says."""
    from tinynet.kernels.threads import TeamSizer

    seen = []
    real = TeamSizer.choose

    def choose(self, key, most):
        size = real(self, key, most)
        seen.append((size, tn.get_threads()))
        return size

    monkeypatch.setattr(TeamSizer, "choose", choose)
    argv = ["train", "--sample", "--epochs", "1", "--hidden", "8", "--quiet", "--threads", "1"]
    assert main(argv) == 0
    assert seen and set(seen) == {(1, 1)}
    assert tn.get_threads() is None  # fit restored the setting


# -- the new user's run: silent mistakes that now get a word ------------------------------------
def test_already_scaled_floats_into_a_rescaling_model_warn():
    """Floats in [0, 1] through rescale=(1/255, 0) train to 16% on MNIST: say why."""
    net = tn.MLP.from_sizes([4, 3], seed=0, rescale=(1 / 255, 0))
    with pytest.warns(RuntimeWarning, match="that is for raw uint8 pixels"):
        net.predict(np.full((2, 4), 0.5, np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net.predict(np.full((2, 4), 128, np.uint8))  # raw pixels: what the layer is for
        net.predict(np.full((2, 4), 200.0))  # unscaled floats too


def test_a_run_that_runs_away_without_converging_says_so():
    """SGD(1e4, momentum=0.99): the weights grow by orders of magnitude while the loss stays
    above the first epoch's; a sane rate trains without the warning."""
    x, y = tn.datasets.mnist_sample("train")
    with tn.use_backend("numpy"):
        net = tn.MLP.from_sizes([784, 32, 10], seed=0, rescale=(1 / 255, 0))
        with pytest.warns(RuntimeWarning, match="training is not converging.*smaller learning"):
            net.fit(x[:500], y[:500], tn.CrossEntropy(), tn.SGD(1e4, momentum=0.99), 4, 32)
        net = tn.MLP.from_sizes([784, 32, 10], seed=0, rescale=(1 / 255, 0))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            net.fit(x[:500], y[:500], tn.CrossEntropy(), tn.SGD(0.1, momentum=0.9), 4, 32)


def test_a_model_file_of_another_format_version_names_both(tmp_path):
    path = tmp_path / "m.npz"
    tn.MLP.from_sizes([3, 2], seed=0).save(path)
    with np.load(path) as archive:
        arrays = {name: archive[name] for name in archive.files}
    arrays["__format__"] = np.array("tinynet-mlp-v2")
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(tn.ModelFileError, match="format tinynet-mlp-v2; this tinynet reads"):
        tn.load(path)


def test_the_sklearn_module_without_scikit_learn_names_the_extra():
    code = (
        "import sys\n"
        "sys.modules['sklearn'] = None  # as if scikit-learn were not installed\n"
        "import tinynet.sklearn\n"
    )
    done = python(code, clean_env())
    assert done.returncode == 1
    said = "ImportError: tinynet.sklearn needs scikit-learn: pip install 'tinynet-mlp[sklearn]'"
    assert said in done.stderr


class DeviceArray:
    """What matters here of a CuPy array: NumPy's implicit conversion refused (as CuPy does
    on a GPU; the host stand-in's arrays are ndarrays and cannot show it), the data by get()."""

    __module__ = "cupy._core.core"

    def __init__(self, data):
        self._data = np.asarray(data)

    def get(self):
        return self._data.copy()

    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use .get()")


def test_weights_and_labels_from_the_gpu_are_taken_with_get():
    """#24: Dense.set_weights and one_hot called np.asarray on CuPy arrays, which raises."""
    W, b = np.arange(6.0).reshape(3, 2) / 10, np.array([0.1, -0.2, 0.3])
    layer = tn.Dense(2, 3)
    layer.set_weights(DeviceArray(W), DeviceArray(b))
    got_W, got_b = layer.get_weights()
    np.testing.assert_array_equal(got_W, W.astype(np.float32))
    np.testing.assert_array_equal(got_b, b.astype(np.float32))
    np.testing.assert_array_equal(tn.one_hot(DeviceArray([2, 0]), 3), [[0, 0, 1], [1, 0, 0]])


@pytest.mark.parametrize("bad", ["abc", "0", "-3", "inf"])
def test_a_bad_mpi_timeout_is_a_clear_error(monkeypatch, bad):
    """TINYNET_MPI_TIMEOUT and MPI(timeout=) take seconds > 0; checked before MPI starts."""
    pytest.importorskip("mpi4py")
    monkeypatch.setenv("TINYNET_MPI_TIMEOUT", bad)
    with pytest.raises(tn.InvalidInputError, match="TINYNET_MPI_TIMEOUT must be a number"):
        tn.distributed.timeout_from_env()
    monkeypatch.delenv("TINYNET_MPI_TIMEOUT")
    assert tn.distributed.timeout_from_env() == tn.distributed.DEFAULT_TIMEOUT_S
    with pytest.raises(tn.InvalidInputError, match="timeout must be a number of seconds"):
        tn.distributed.MPI(timeout=float(bad) if bad != "abc" else bad)


def test_every_setting_that_changes_a_distributed_run_reaches_the_ranks_check(tmp_path):
    """N3: fit hands the ranks' check every setting outside the model: epochs, shuffling,
    validation, schedule, early stopping and the checkpoint resumed (by its bytes)."""

    class Stop(Exception):
        pass

    class Ranks:  # records what fit asks the ranks to agree on, then stops the run
        def start(self, model, optimizer, loss, batch_size, data, seed, settings):
            self.settings = settings
            raise Stop

    x, y = tn.datasets.mnist_sample("train")
    net = tn.MLP.from_sizes([784, 8, 10], seed=0, rescale=(1 / 255, 0))
    ckpt = tmp_path / "c.ckpt"
    net.fit(x[:64], y[:64], tn.CrossEntropy(), tn.SGD(0.1), 1, 32, checkpoint=ckpt)

    def settings(**given):
        ranks = Ranks()
        with pytest.raises(Stop):
            net.fit(x[:96], y[:96], tn.CrossEntropy(), tn.SGD(0.1), distributed=ranks, **given)
        return ranks.settings

    base = settings(epochs=3)
    assert settings(epochs=3) == base  # the same settings give the same fingerprint
    for given in (
        dict(epochs=4),
        dict(epochs=3, shuffle=False),
        dict(epochs=3, validation_split=0.25),
        dict(epochs=3, validation_data=(x[:10], y[:10])),
        dict(epochs=3, schedule=tn.StepLR(1)),
        dict(epochs=3, schedule=tn.StepLR(2)),
        dict(epochs=3, early_stopping=tn.EarlyStopping("loss")),
        dict(epochs=3, resume=ckpt),
    ):
        assert settings(**given) != base, given
    resumed = settings(epochs=3, resume=ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[:-1] + b"x")  # another checkpoint at the same path
    assert settings(epochs=3, resume=ckpt) != resumed


def test_the_gpu_session_without_mnist_stops_at_once_saying_where_to_put_it(tmp_path):
    """benchmarks/gpu_session.sh on a device that got no MNIST: one line naming the folder,
    exit 2, before any install or test (device time is short)."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_session.sh"
    empty = tmp_path / "mnist"
    empty.mkdir()
    done = subprocess.run(
        ["bash", str(script)],
        cwd=tmp_path,
        env={**os.environ, "OUT": str(tmp_path / "out"), "TINYNET_DATA_DIR": str(empty)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert f"no MNIST in {empty}: copy the four .gz files there" in done.stdout
    assert "===" not in done.stdout.replace(f"=== no MNIST in {empty}", "")  # nothing else ran
