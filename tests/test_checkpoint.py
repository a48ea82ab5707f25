"""Checkpoints that any run can resume, and that nothing else can: long histories, hand-edited
or foreign metadata, another activation, loss or schedule. Every refusal leaves the model and
optimizer as they were."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

import tinynet as tn
from tinynet import checkpoint as checkpoints
from tinynet import model_file

SIZES = [784, 24, 10]


def _data(n: int = 96):
    x, y = tn.datasets.mnist_sample("train")
    return x[:n], y[:n]


def _model(hidden: str = "relu", seed: int = 0) -> tn.MLP:
    with tn.use_backend("numpy"):
        return tn.MLP.from_sizes(SIZES, hidden, "softmax", seed=seed, rescale=(1 / 255, 0))


def _weights(net: tn.MLP) -> list[np.ndarray]:
    return [a.copy() for pair in net.get_weights() for a in pair if a is not None]


def _written(tmp_path, **fit_settings):
    """A checkpoint of 2 epochs of Adam with a validation split, StepLR and early stopping."""
    x, y = _data()
    path = tmp_path / "run.ckpt"
    settings = dict(
        validation_split=0.25,
        schedule=tn.StepLR(1, 0.5),
        early_stopping=tn.EarlyStopping(patience=5),
    )
    settings.update(fit_settings)
    _model().fit(x, y, tn.CrossEntropy(), tn.Adam(), 2, 32, checkpoint=path, **settings)
    return path


def _edit(path, change) -> None:
    """Rewrite the checkpoint's metadata member through ``change(meta)``, arrays as they are."""
    with np.load(path) as archive:
        arrays = {name: archive[name] for name in archive.files}
    meta = json.loads(str(arrays["__checkpoint__"]))
    changed = change(meta)
    text = changed if isinstance(changed, str) else json.dumps(meta)
    arrays["__checkpoint__"] = np.array(text)
    _save(path, arrays)


def _save(path, arrays) -> None:
    with open(path, "wb") as f:  # np.savez would add .npz to a name without it
        np.savez(f, **arrays)


def _assert_refused_untouched(path, match, hidden="relu", loss=None, **fit_settings):
    """Resuming fails with a ModelFileError matching ``match``; the model's weights and the
    optimizer's learning rate and state are what they were."""
    x, y = _data()
    net, optimizer = _model(hidden, seed=3), tn.Adam(0.004)
    before = _weights(net)
    settings = dict(validation_split=0.25, schedule=tn.StepLR(1, 0.5))
    settings.update(fit_settings)
    with pytest.raises(tn.ModelFileError, match=match):
        net.fit(x, y, loss or tn.CrossEntropy(), optimizer, 4, 32, resume=path, **settings)
    for got, want in zip(_weights(net), before, strict=True):
        np.testing.assert_array_equal(got, want)
    assert optimizer.lr == 0.004 and optimizer.step_counts() == {}


def test_a_long_history_is_stored_as_arrays_and_resumes(tmp_path):
    """N2: 5,000 epochs of history with validation (once 1.1 MB of JSON past 3,000 epochs, over
    the reader's 1 MiB): the metadata stays small and the run resumes with all of it."""
    x, y = _data()
    net, optimizer = _model(), tn.SGD(0.05)
    epochs = 5000
    rng = np.random.default_rng(1)
    keys = ("loss", "time", "samples_per_s", "lr", "val_loss", "val_accuracy")
    history = {key: rng.random(epochs).tolist() for key in keys}
    state = checkpoints.Checkpoint(
        epoch=epochs,
        rng_state=np.random.default_rng(5).bit_generator.state,
        split_seed=7,
        history=history,
        schedule=None,
        early_stopping=None,
    )
    path = tmp_path / "long.ckpt"
    checkpoints.save(path, net, optimizer, state, loss=tn.CrossEntropy())
    with zipfile.ZipFile(path) as archive:
        assert archive.getinfo("__checkpoint__.npy").file_size < 64 << 10
    resumed = net.fit(
        x, y, tn.CrossEntropy(), tn.SGD(0.05), epochs + 1, 32, validation_split=0.25, resume=path
    )
    for key in keys:
        assert len(resumed[key]) == epochs + 1
        assert resumed[key][:epochs] == history[key]  # float64 arrays: exact


def test_a_checkpoint_the_reader_would_refuse_is_never_written(tmp_path, monkeypatch):
    """The writer measures its metadata against the reader's limit; the last good checkpoint
    stays."""
    path = _written(tmp_path)
    good = path.read_bytes()
    monkeypatch.setattr(model_file, "MAX_TEXT_BYTES", 2048)
    x, y = _data()
    with pytest.raises(tn.ModelFileError, match="over the 2,048 a reader accepts"):
        _model().fit(x, y, tn.CrossEntropy(), tn.Adam(), 1, 32, checkpoint=path)
    assert path.read_bytes() == good


def test_another_activation_or_loss_is_another_model(tmp_path):
    """N6: the same shapes but another activation, or another loss, is refused."""
    path = _written(tmp_path)
    _assert_refused_untouched(
        path, "layer 1: activation 'relu' in the checkpoint, 'tanh' here", "tanh"
    )
    _assert_refused_untouched(
        path, r"trained with loss CrossEntropy.*this run uses SquaredError", loss=tn.SquaredError()
    )


def test_another_schedule_type_is_a_clear_error(tmp_path):
    """N8: a checkpoint of StepLR resumed with ReduceLROnPlateau (KeyError 'best' before)."""
    path = _written(tmp_path)
    _assert_refused_untouched(
        path,
        "state of schedule StepLR, this run uses ReduceLROnPlateau",
        schedule=tn.ReduceLROnPlateau(),
    )


def _deep(meta):
    return '{"format": "tinynet-checkpoint-2", "x": ' + "[" * 100_000 + "]" * 100_000 + "}"


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda m: m.update(lr=-1.0), "bad learning rate -1.0"),
        (lambda m: m.update(lr="fast"), "bad learning rate 'fast'"),
        (lambda m: m.update(epoch=-5), "bad epoch count -5"),
        (lambda m: m.update(epoch=2.5), "bad epoch count 2.5"),
        (lambda m: m.update(steps=["x"] * 4), "bad step counts"),
        (lambda m: m.update(steps=[1, 2]), "bad step counts"),
        (lambda m: m.update(rng_state={"bit_generator": "PCG64"}), "shuffling generator state"),
        (lambda m: m.update(rng_state=[1, 2]), "shuffling generator state"),
        (lambda m: m.update(split_seed=-1), "bad split seed -1"),
        (lambda m: m.update(history="loss"), "bad history keys"),
        (lambda m: m["history"].append("more"), r"member 'history.\d+' is missing"),
        (lambda m: m["schedule"].update(base_lr="x"), "bad schedule state"),
        (lambda m: m["schedule"].pop("base_lr"), "bad schedule state"),
        (lambda m: m.update(early_stopping={"best": 1}), "bad early stopping state"),
        (lambda m: m["early_stopping"].update(wait=-2), "bad early stopping state"),
        (lambda m: m.update(shapes=[[784, "x"]]), "bad parameter shapes"),
        (lambda m: m.update(optimizer=3), "bad optimizer settings"),
        (lambda m: m.pop("epoch"), "its metadata lacks epoch"),
        (lambda m: m.update(format="tinynet-checkpoint-1"), "format tinynet-checkpoint-1; .*reads"),
        (lambda m: m.update(format="other"), "no checkpoint metadata of format"),
        (lambda m: "[1, 2]", "not a JSON object"),
        (lambda m: "{", "not JSON"),
        (_deep, "not JSON"),
    ],
)
def test_bad_metadata_is_refused_before_anything_changes(tmp_path, change, says):
    """N7: hand-edited or foreign values each give a ModelFileError naming them, and the
    model and optimizer stay as they were."""
    path = _written(tmp_path)
    _edit(path, change)
    _assert_refused_untouched(path, says, early_stopping=tn.EarlyStopping(patience=5))


def test_weights_that_are_not_finite_are_refused(tmp_path):
    path = _written(tmp_path)
    with np.load(path) as archive:
        arrays = {name: archive[name] for name in archive.files}
    arrays["param.2"] = arrays["param.2"].copy()
    arrays["param.2"][0, 0] = np.inf
    _save(path, arrays)
    _assert_refused_untouched(path, "NaN or inf")


def test_resuming_a_run_that_is_already_done_says_so(tmp_path):
    """N16: epochs counts all epochs; asking for no more than were done trains nothing, with a
    warning instead of silence."""
    path = _written(tmp_path, schedule=None, early_stopping=None, validation_split=0.0)
    x, y = _data()
    net = _model(seed=3)
    with pytest.warns(RuntimeWarning, match="holds 2 epochs done and epochs=2"):
        history = net.fit(x, y, tn.CrossEntropy(), tn.Adam(), 2, 32, resume=path)
    assert len(history["loss"]) == 2
