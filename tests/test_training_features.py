"""Schedules, validation_split, early stopping, and checkpoints that resume a run exactly."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

import tinynet as tn
from tests.faults import clean_env

SIZES = [784, 24, 10]


def _data(n: int = 480):
    x, y = tn.datasets.mnist_sample("train")
    return x[:n], y[:n]


def _model(backend: str = "numpy", seed: int = 0) -> tn.MLP:
    with tn.use_backend(backend):
        return tn.MLP.from_sizes(SIZES, "relu", "softmax", seed=seed, rescale=(1 / 255, 0))


# -- schedules --------------------------------------------------------------------------------
def _rates(schedule, epochs: int, lr: float = 0.5, records=None) -> list[float]:
    """The learning rate of each epoch 1..epochs, as fit would set them."""
    opt = tn.SGD(lr)
    schedule.start(opt)
    rates = []
    for epoch in range(1, epochs + 1):
        rates.append(opt.lr)
        schedule.after_epoch(epoch, records[epoch - 1] if records else {})
    return rates


def test_schedules_follow_their_closed_forms():
    # by hand: base 0.5
    assert _rates(tn.StepLR(2, gamma=0.1), 5) == pytest.approx([0.5, 0.5, 0.05, 0.05, 0.005])
    assert _rates(tn.ExponentialLR(0.5), 4) == pytest.approx([0.5, 0.25, 0.125, 0.0625])
    cosine = _rates(tn.CosineLR(4, min_lr=0.1), 6)
    # 0.1 + 0.4 (1 + cos(pi e / 4)) / 2 for e = 0..4, then held at 0.1
    expected = [0.1 + 0.2 * (1 + math.cos(math.pi * e / 4)) for e in range(5)] + [0.1]
    assert cosine == pytest.approx(expected)
    losses = [{"val_loss": v} for v in (1.0, 0.9, 0.95, 0.91, 0.92, 0.93, 0.5)]
    plateau = _rates(tn.ReduceLROnPlateau(factor=0.5, patience=2), 7, records=losses)
    # best 0.9 after epoch 2; epochs 3, 4, 5 do not improve: the third of them halves the rate
    assert plateau == pytest.approx([0.5, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25])


def test_schedules_match_torch():
    torch = pytest.importorskip("torch")
    cases = [
        (tn.StepLR(3, 0.5), lambda o: torch.optim.lr_scheduler.StepLR(o, 3, 0.5)),
        (tn.ExponentialLR(0.9), lambda o: torch.optim.lr_scheduler.ExponentialLR(o, 0.9)),
        (tn.CosineLR(5, 0.01), lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 5, 0.01)),
    ]
    for ours, make in cases:
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.5)
        theirs = make(opt)
        expected = []
        for _ in range(5):  # within t_max: torch's recursive cosine equals the closed form
            expected.append(opt.param_groups[0]["lr"])
            opt.step()
            theirs.step()
        assert _rates(ours, 5) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(("backend", "batch"), [("numpy", 64), ("numba", 16), ("numba", 1)])
def test_a_schedule_changes_the_rate_the_fused_paths_train_with(backend, batch):
    """Two epochs under StepLR(1, 0.1) equal an epoch at 0.1 and then one at 0.01 set by hand
    (same batches: no shuffling), and differ from two epochs at 0.1."""
    x, y = _data()
    args = (x, y, tn.CrossEntropy())
    scheduled, by_hand, plain = _model(backend), _model(backend), _model(backend)
    with tn.use_backend(backend):
        scheduled.fit(*args, tn.SGD(0.1), 2, batch, shuffle=False, schedule=tn.StepLR(1))
        opt = tn.SGD(0.1)
        by_hand.fit(*args, opt, 1, batch, shuffle=False)
        opt.lr = 0.01
        by_hand.fit(*args, opt, 1, batch, shuffle=False)
        plain.fit(*args, tn.SGD(0.1), 2, batch, shuffle=False)
    for (W, b), (W_hand, b_hand) in zip(
        scheduled.get_weights(), by_hand.get_weights(), strict=True
    ):
        np.testing.assert_array_equal(W, W_hand)
        np.testing.assert_array_equal(b, b_hand)
    assert not np.array_equal(scheduled.get_weights()[-1][0], plain.get_weights()[-1][0])


# -- validation_split and early stopping ----------------------------------------------------------
def test_validation_split_is_deterministic_for_a_seed_and_holds_out_that_fraction():
    x, y = _data()
    runs = []
    for _ in range(2):
        net = _model()
        history = net.fit(
            x, y, tn.CrossEntropy(), tn.SGD(0.1), 2, 32, seed=5, validation_split=0.25
        )
        runs.append((history["val_loss"], net.get_weights()[0][0]))
    assert runs[0][0] == runs[1][0]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    # the held-out quarter scores as evaluate scores those rows
    held = np.sort(
        np.random.default_rng(int(np.random.SeedSequence(5).generate_state(1)[0])).permutation(
            len(x)
        )[:120]
    )
    net = _model()
    history = net.fit(x, y, tn.CrossEntropy(), tn.SGD(0.1), 1, 32, seed=5, validation_split=0.25)
    assert history["val_loss"][0] == pytest.approx(
        net.evaluate(x[held], y[held], tn.CrossEntropy())["loss"], rel=1e-6
    )
    with pytest.raises(tn.InvalidInputError, match="validation_split"):
        net.fit(x, y, tn.CrossEntropy(), tn.SGD(0.1), validation_split=1.0)
    with pytest.raises(tn.InvalidInputError, match="not both"):
        net.fit(x, y, tn.CrossEntropy(), tn.SGD(0.1), validation_data=(x, y), validation_split=0.1)


def test_early_stopping_stops_and_restores_the_best_epoch():
    x, y = _data()
    # a rate this high makes the validation loss rise after a few epochs
    net = _model()
    stopper = tn.EarlyStopping(patience=2)
    kept = []
    history = net.fit(
        x,
        y,
        tn.CrossEntropy(),
        tn.SGD(2.0),
        30,
        32,
        seed=0,
        validation_split=0.3,
        early_stopping=stopper,
        on_epoch_end=lambda e, r: kept.append([w.copy() for w, _ in net.get_weights()]),
    )
    losses = history["val_loss"]
    assert stopper.stopped_epoch is not None and len(losses) == stopper.stopped_epoch < 30
    best = int(np.argmin(losses)) + 1
    assert stopper.best_epoch == best and stopper.stopped_epoch == best + 2
    for (W, _), W_best in zip(net.get_weights(), kept[best - 1], strict=True):
        np.testing.assert_array_equal(W, W_best)
    with pytest.raises(tn.InvalidInputError, match="does not record"):
        _model().fit(x, y, tn.CrossEntropy(), tn.SGD(0.1), early_stopping=tn.EarlyStopping())


# -- checkpoints ------------------------------------------------------------------------------
RESUME = """
import sys, numpy as np, tinynet as tn
backend, name, path, out = sys.argv[1:5]
x, y = tn.datasets.mnist_sample("train")
x, y = x[:480], y[:480]
optimizers = {
    "sgd": lambda: tn.SGD(0.1),
    "momentum": lambda: tn.SGD(0.05, 0.9),
    "adam": lambda: tn.Adam(2e-3),
    "adamw": lambda: tn.AdamW(2e-3, weight_decay=0.05),
}
with tn.use_backend(backend):
    net = tn.MLP.from_sizes([784, 24, 10], "relu", "softmax", seed=99, rescale=(1 / 255, 0))
    net.fit(x, y, tn.CrossEntropy(), optimizers[name](), 4, int(sys.argv[5]), seed=7,
            validation_split=0.2, schedule=tn.ExponentialLR(0.7), resume=path)
np.savez(out, *[w for pair in net.get_weights() for w in pair])
"""


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam", "adamw"])
@pytest.mark.parametrize(("backend", "batch"), [("numpy", 32), ("numba", 1), ("numba", 64)])
def test_a_resumed_run_repeats_an_uninterrupted_one_bit_for_bit(
    tmp_path, monkeypatch, backend, batch, name
):
    """4 epochs straight, against 2 epochs with a checkpoint, then a fresh process that loads it
    (into a model initialised differently) and trains epochs 3 and 4."""
    optimizers = {
        "sgd": lambda: tn.SGD(0.1),
        "momentum": lambda: tn.SGD(0.05, 0.9),
        "adam": lambda: tn.Adam(2e-3),
        "adamw": lambda: tn.AdamW(2e-3, weight_decay=0.05),
    }
    x, y = _data()
    with tn.use_backend(backend) as B:  # every call on all its threads, as in the child below
        monkeypatch.setattr(B._blas, "adaptive", False)
        monkeypatch.setattr(B, "adaptive_threads", False, raising=False)
    settings = dict(seed=7, validation_split=0.2)
    straight = _model(backend, seed=1)
    with tn.use_backend(backend):
        straight.fit(
            x,
            y,
            tn.CrossEntropy(),
            optimizers[name](),
            4,
            batch,
            schedule=tn.ExponentialLR(0.7),
            **settings,
        )
        first = _model(backend, seed=1)
        ckpt = tmp_path / "run.ckpt"
        first.fit(
            x,
            y,
            tn.CrossEntropy(),
            optimizers[name](),
            2,
            batch,
            schedule=tn.ExponentialLR(0.7),
            checkpoint=ckpt,
            **settings,
        )
    out = tmp_path / "resumed.npz"
    env = clean_env(TINYNET_ADAPTIVE_THREADS="0")  # OpenBLAS rounds by its thread count
    done = subprocess.run(
        [sys.executable, "-c", RESUME, backend, name, str(ckpt), str(out), str(batch)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    resumed = np.load(out)
    expected = [w for pair in straight.get_weights() for w in pair]
    for i, want in enumerate(expected):
        np.testing.assert_array_equal(resumed[f"arr_{i}"], want)


def test_a_checkpoint_of_another_model_or_optimizer_is_a_clear_error(tmp_path):
    x, y = _data(96)
    ckpt = tmp_path / "run.ckpt"
    _model().fit(x, y, tn.CrossEntropy(), tn.Adam(), 1, 32, checkpoint=ckpt)
    other = tn.MLP.from_sizes([784, 16, 10], "relu", "softmax", rescale=(1 / 255, 0))
    with pytest.raises(tn.ModelFileError, match="another architecture"):
        other.fit(x, y, tn.CrossEntropy(), tn.Adam(), 2, 32, resume=ckpt)
    with pytest.raises(tn.ModelFileError, match="written by Adam, this run uses SGD"):
        _model().fit(x, y, tn.CrossEntropy(), tn.SGD(0.1), 2, 32, resume=ckpt)
    damaged = tmp_path / "damaged.ckpt"
    damaged.write_bytes(ckpt.read_bytes()[:200])
    with pytest.raises(tn.ModelFileError, match="not a tinynet checkpoint"):
        _model().fit(x, y, tn.CrossEntropy(), tn.Adam(), 2, 32, resume=damaged)
    with pytest.raises(tn.ModelFileError, match="checkpoint not found"):
        _model().fit(x, y, tn.CrossEntropy(), tn.Adam(), 2, 32, resume=tmp_path / "none")


def test_a_checkpoint_from_another_backend_or_dtype_says_what_changes(tmp_path):
    x, y = _data(96)
    ckpt = tmp_path / "run.ckpt"
    _model("numpy").fit(x, y, tn.CrossEntropy(), tn.Adam(), 1, 32, checkpoint=ckpt)
    with pytest.warns(RuntimeWarning, match="written on backend 'numpy'.*continuing on 'numba'"):
        _model("numba").fit(x, y, tn.CrossEntropy(), tn.Adam(), 2, 32, resume=ckpt)
    with tn.use_backend("numpy"):
        wide = tn.MLP.from_sizes(SIZES, "relu", "softmax", dtype="float64", rescale=(1 / 255, 0))
    with pytest.warns(RuntimeWarning, match="in float32; continuing on 'numpy' in float64"):
        wide.fit(x, y, tn.CrossEntropy(), tn.Adam(), 2, 32, resume=ckpt)
    with pytest.warns(RuntimeWarning, match=r"other optimizer settings \(eps: 1e-08 -> 0.001\)"):
        _model("numpy").fit(x, y, tn.CrossEntropy(), tn.Adam(eps=1e-3), 2, 32, resume=ckpt)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: tn.StepLR(0), "step_size must be an integer >= 1"),
        (lambda: tn.StepLR(2, gamma=0), r"gamma must be in \(0, inf\)"),
        (lambda: tn.ExponentialLR(math.nan), "gamma must be in"),
        (lambda: tn.CosineLR(0), "t_max must be an integer >= 1"),
        (lambda: tn.CosineLR(5, min_lr=-1), r"min_lr must be in \[0, inf\)"),
        (lambda: tn.ReduceLROnPlateau(factor=1.0), r"factor must be in \(0, 1\)"),
        (lambda: tn.ReduceLROnPlateau(patience=-1), "patience must be an integer >= 0"),
        (lambda: tn.ReduceLROnPlateau(monitor=3), "monitor must be a History key"),
        (lambda: tn.EarlyStopping(patience=0), "patience must be an integer >= 1"),
        (lambda: tn.EarlyStopping(min_delta=-0.1), r"min_delta must be in \[0, inf\)"),
        (lambda: tn.EarlyStopping(mode="up"), "mode must be 'auto', 'min' or 'max'"),
        (lambda: tn.EarlyStopping(monitor=None), "monitor must be a History key"),
    ],
)
def test_bad_schedule_and_stopping_settings_are_clear_errors(make, message):
    with pytest.raises(tn.InvalidInputError, match=message):
        make()


def test_a_plateau_schedule_needs_the_value_it_watches():
    x, y = _data(96)
    with pytest.raises(tn.InvalidInputError, match="ReduceLROnPlateau watches 'val_loss'"):
        _model().fit(x, y, tn.CrossEntropy(), tn.SGD(0.1), schedule=tn.ReduceLROnPlateau())


def test_early_stopping_on_an_accuracy_waits_for_it_to_rise():
    stopper = tn.EarlyStopping("val_accuracy", patience=2, restore_best=False)
    accuracies = [0.5, 0.7, 0.6, 0.7]  # best 0.7 at epoch 2; 0.7 again is no gain
    stops = [
        stopper.after_epoch(e, {"val_accuracy": a}, [], np)
        for e, a in enumerate(accuracies, start=1)
    ]
    assert stops == [False, False, False, True]
    assert stopper.best_epoch == 2 and stopper.stopped_epoch == 4


def test_each_epoch_takes_the_strategy_its_backend_offers():
    """strategies.choose: the fused epoch where the backend trains the model's batches itself,
    kernel by kernel otherwise (the numpy reference; Adam over parameters whose update counts
    differ, which one fused epoch cannot carry)."""
    from tinynet import strategies

    x, y = _data(64)

    def chosen(backend, optimizer, freeze_first=False):
        net = _model(backend)
        if freeze_first:  # one epoch with the first layer frozen: its Adam count stays 0
            net.layers[1].freeze()
            net.fit(x, y, tn.CrossEntropy(), optimizer, 1, 32)
            net.layers[1].unfreeze()
        epoch = strategies.Epoch(
            net, net.as_inputs(x), net.as_targets(y, len(y)), tn.CrossEntropy(), optimizer, 32,
            None, None,
        )  # fmt: skip
        return type(strategies.choose(epoch, None))

    assert chosen("numpy", tn.SGD(0.1)) is strategies.KernelByKernel
    assert chosen("numba", tn.SGD(0.1)) is strategies.Fused
    assert chosen("numba", tn.Adam()) is strategies.Fused
    assert chosen("numba", tn.Adam(), freeze_first=True) is strategies.KernelByKernel


def test_the_progress_bar_shows_the_running_loss_and_rate():
    """The bar counts every trained row, and shows the mean loss so far and samples/s,
    refreshed at most twice a second (reading the loss waits for the device); a clock of the
    test's own."""
    from tinynet import training

    clock = iter([100.0, 101.0, 101.2, 102.0])  # the start, then one reading per stretch
    with training._Progress(1000, "epoch 1/1", True, clock=lambda: next(clock)) as progress:
        progress.trained(500, 250.0)  # 1 s in: loss 250 / 500, 500 rows a second
        assert progress.bar.n == 500
        assert progress.bar.postfix == "loss=0.5000, samples_s=500"
        progress.trained(800, 560.0)  # 0.2 s later: counted, not redrawn
        assert progress.bar.n == 800
        assert progress.bar.postfix == "loss=0.5000, samples_s=500"
        progress.trained(1000, 600.0)  # 2 s in
        assert progress.bar.n == 1000
        assert progress.bar.postfix == "loss=0.6000, samples_s=500"
