"""The training loop: batches from the data, steps through the model, a history back.

A batch flows like this: the data stay where they are (uint8 images are not converted to a float
copy), each step gathers ``batch_size`` rows by index, the model's ``step`` runs forward, loss,
backward and the optimizer through the backend's kernels, and the loss is added up on the
device so the loop never waits for it except to refresh the progress bar. Where the backend's
``can_train_batches`` says so for the model and batch size (Numba: always), the same batches go
to its ``train_batches`` instead, a stretch of the epoch per call.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from tinynet import checkpoint as checkpoints
from tinynet import strategies
from tinynet.backend import use_threads
from tinynet.callbacks import EarlyStopping
from tinynet.errors import InvalidInputError, ShapeError, checked_seed, positive_int
from tinynet.losses import Loss
from tinynet.optim import Optimizer
from tinynet.schedules import Schedule
from tinynet.strategies import Trainable

if TYPE_CHECKING:
    from tinynet.distributed import MPI


@dataclass
class History:
    """Per-epoch records of ``fit``: ``history["loss"][e]`` is epoch e's mean training loss."""

    history: dict[str, list[float]] = field(default_factory=dict)

    def append(self, **values: float) -> None:
        for key, value in values.items():
            self.history.setdefault(key, []).append(value)

    def __getitem__(self, key: str) -> list[float]:
        return self.history[key]


def fit(
    model: Trainable,
    X: Any,
    T: Any,
    loss: Loss,
    optimizer: Optimizer,
    epochs: int = 1,
    batch_size: int = 32,
    shuffle: bool = True,
    seed: int | None = None,
    validation_data: tuple[Any, Any] | None = None,
    progress: bool = False,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
    *,
    validation_split: float = 0.0,
    schedule: Schedule | None = None,
    early_stopping: EarlyStopping | None = None,
    checkpoint: str | os.PathLike | None = None,
    resume: str | os.PathLike | None = None,
    distributed: MPI | None = None,
    threads: int | None = None,
) -> History:
    """Mini-batch SGD over (X, T) for ``epochs`` epochs; returns the History.

    X: (n, in_features), float or uint8 (with a Rescaling first layer). T: (n, out_features)
    targets, or n integer labels (one-hot encoded). ``batch_size=1`` is the seeds' per-sample
    SGD. ``seed`` fixes the shuffling order. History keys: loss, time, samples_per_s, lr, and
    val_loss, val_accuracy with validation data; ``on_epoch_end(epoch, record)`` sees
    each epoch's record. Raises InvalidInputError if the loss or a weight turns NaN or inf,
    after putting back the weights (and optimizer state) the model had before that epoch.

    ``validation_split``: that fraction of (X, T), drawn by a generator seeded from ``seed``,
    is held out as validation data. ``schedule`` (tinynet.schedules) sets the learning rate
    after each epoch; ``early_stopping`` (tinynet.EarlyStopping) may end the run early.
    ``checkpoint``: a file written atomically after every epoch with all the run's state;
    ``resume``: such a file to continue from (``epochs`` counts all epochs, done and to do), on
    the same backend and thread count bit for bit.

    ``distributed``: a ``tinynet.distributed.MPI`` on every rank of an ``mpiexec`` job, each
    passing the whole training set: each global batch of ``batch_size`` rows is split over the
    ranks and their gradients averaged (one allreduce a step); rank 0 alone shows progress and
    writes the checkpoint. An error on one rank stops them all with a line naming it.

    ``threads``: train on this many threads (``tinynet.use_threads``); None: as set by
    ``tinynet.set_threads``, by default chosen from the machine's load.
    """
    if threads is None:
        return _fit(**_arguments(locals()))
    with use_threads(threads):
        return _fit(**_arguments(locals()))


def _arguments(given: dict[str, Any]) -> dict[str, Any]:
    """fit's arguments (its locals before anything else runs) but ``threads``, for _fit."""
    return {name: value for name, value in given.items() if name != "threads"}


def _fit(
    model: Trainable,
    X: Any,
    T: Any,
    loss: Loss,
    optimizer: Optimizer,
    epochs: int,
    batch_size: int,
    shuffle: bool,
    seed: int | None,
    validation_data: tuple[Any, Any] | None,
    progress: bool,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None,
    validation_split: float,
    schedule: Schedule | None,
    early_stopping: EarlyStopping | None,
    checkpoint: str | os.PathLike | None,
    resume: str | os.PathLike | None,
    distributed: MPI | None,
) -> History:
    epochs = positive_int("epochs", epochs)
    seed = checked_seed(seed)
    batch_size = positive_int("batch_size", batch_size)
    model.check_loss(loss)
    B = model.backend
    X = model.as_inputs(X)  # checks shape and NaN/inf once; uint8 stays uint8
    n = X.shape[0]
    if n == 0:
        raise ShapeError("no training samples")
    T = model.as_targets(T, n)
    if distributed is not None:  # the same model, weights and shuffling seed on every rank
        from tinynet.distributed import data_digest, file_digest

        settings = {
            "epochs": epochs,
            "shuffle": shuffle,
            "validation_split": validation_split,
            "validation_data": (
                None
                if validation_data is None
                else data_digest(B, *(B.asarray(a) for a in validation_data))
            ),
            "schedule": _described(schedule),
            "early_stopping": _described(early_stopping),
            "resume": None if resume is None else file_digest(resume),
        }
        seed = distributed.start(model, optimizer, loss, batch_size, (X, T), seed, settings)
        progress = progress and distributed.is_root
    if not (isinstance(validation_split, int | float) and 0 <= validation_split < 1):
        raise InvalidInputError(f"validation_split must be in [0, 1), got {validation_split!r}")
    if validation_split and validation_data is not None:
        raise InvalidInputError("pass validation_data or validation_split, not both")
    rng = np.random.default_rng(seed)
    history = History()
    state = checkpoints.Checkpoint(0, {}, None, {}, None, None)
    best = None
    if resume is not None:
        state, best = checkpoints.load(
            resume, model, optimizer, loss=loss, schedule=schedule, early_stopping=early_stopping
        )
        if state.epoch >= epochs:
            warnings.warn(
                f"{os.fspath(resume)} holds {state.epoch} epochs done and epochs={epochs} "
                "counts all epochs, done and to do: nothing to train (ask for more epochs)",
                RuntimeWarning,
                stacklevel=3,
            )
        rng.bit_generator.state = state.rng_state
        history = History({key: list(values) for key, values in state.history.items()})
    if validation_split:
        if state.split_seed is None:
            state.split_seed = int(np.random.SeedSequence(seed).generate_state(1)[0])
        X, T, validation_data = _split(X, T, validation_split, state.split_seed, B)
        n = X.shape[0]
    if validation_data is not None:
        X_val, T_val = validation_data
        X_val = model.as_inputs(X_val)
        T_val = model.as_targets(T_val, X_val.shape[0])
    if schedule is not None:
        schedule.start(optimizer)
        if state.schedule is not None:
            schedule.load_state(state.schedule)
    if early_stopping is not None:
        early_stopping.start()
        if state.early_stopping is not None:
            early_stopping.load_state(state.early_stopping, best)
            if early_stopping.stopped_epoch is not None:
                return history  # the run this checkpoint holds had stopped
    # Under MPI, an error on one rank (a failed checkpoint write, a callback, a kernel) stops
    # every rank: the others would wait forever in the next collective.
    with _every_rank_stops_with(distributed):
        watch = _Runaway(model, optimizer)
        for epoch in range(state.epoch + 1, epochs + 1):
            saved = _snapshot(model, optimizer)  # restored if this epoch diverges
            chunk = _chunk(n, batch_size)
            order = rng.permutation(n) if shuffle else None
            order_on_device = B.asarray(order) if order is not None else None  # one upload
            this_epoch = strategies.Epoch(
                model, X, T, loss, optimizer, batch_size, order, order_on_device
            )
            strategy = strategies.choose(this_epoch, distributed)
            total = B.xp.zeros((), dtype=np.float64)
            start_time = time.perf_counter()
            with _Progress(n, f"epoch {epoch}/{epochs}", progress) as bar:
                for start in range(0, n, chunk):
                    stop = min(start + chunk, n)
                    total += strategy.train(start, stop)
                    bar.trained(stop, total)
            if distributed is not None:
                total = distributed.sum(float(total))  # each rank summed its own shards' losses
            mean_loss = float(total) / n
            elapsed = time.perf_counter() - start_time
            _check_diverged(model, optimizer, saved, epoch, mean_loss)
            record = {
                "loss": mean_loss,
                "time": elapsed,
                "samples_per_s": n / elapsed,
                "lr": optimizer.lr,  # the rate this epoch trained with
            }
            if validation_data is not None:
                scores = _evaluate_arrays(model, X_val, T_val, loss, 4096)
                record.update(val_loss=scores["loss"], val_accuracy=scores["accuracy"])
            history.append(**record)
            watch.after_epoch(epoch, mean_loss)
            stop = early_stopping is not None and early_stopping.after_epoch(
                epoch, record, model.parameters(), B.xp
            )
            if schedule is not None:
                schedule.after_epoch(epoch, record)
            if on_epoch_end is not None:
                on_epoch_end(epoch, record)
            if checkpoint is not None and (distributed is None or distributed.is_root):
                state.epoch, state.rng_state = epoch, rng.bit_generator.state
                state.history = history.history
                state.schedule = schedule.state() if schedule is not None else None
                state.early_stopping = (
                    early_stopping.state() if early_stopping is not None else None
                )
                best = early_stopping.best_params if early_stopping is not None else None
                checkpoints.save(checkpoint, model, optimizer, state, best, loss)
            if stop:
                break
        if early_stopping is not None:
            early_stopping.restore(model.parameters())
    return history


class _Progress:
    """The epoch's progress bar (tqdm; nothing when off), with the running loss and rate,
    refreshed at most twice a second: reading the loss waits for the device."""

    def __init__(
        self, n: int, title: str, on: bool, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self.on, self.done, self.clock = on, 0, clock
        self.bar = tqdm(total=n, desc=title, unit="sample", unit_scale=True, disable=not on,
                        leave=False, mininterval=0.5)  # fmt: skip
        self.start = self.next_refresh = clock()

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()

    def trained(self, rows: int, total: Any) -> None:
        """The first ``rows`` of the epoch are trained; ``total``: their loss sum."""
        if not self.on:
            return
        self.bar.update(rows - self.done)
        self.done = rows
        now = self.clock()
        if now >= self.next_refresh:
            self.next_refresh = now + 0.5
            rate = rows / max(now - self.start, 1e-9)
            self.bar.set_postfix(
                loss=f"{float(total) / rows:.4f}", samples_s=f"{rate:,.0f}", refresh=False
            )


def _check_diverged(
    model: Trainable, optimizer: Optimizer, saved: Any, epoch: int, mean_loss: float
) -> None:
    """InvalidInputError, with the weights and optimizer state put back to ``saved`` (those
    before the epoch), when the epoch's loss or a weight is not finite. The loss is that of
    the weights before each step: the last steps' updates can overflow with a finite loss,
    so the weights are checked too."""
    diverged = None if math.isfinite(mean_loss) else f"the loss is {mean_loss}"
    xp = model.backend.xp
    if diverged is None and not all(bool(xp.isfinite(p.data).all()) for p in model.parameters()):
        diverged = "a weight overflowed to inf or NaN"
    if diverged is not None:
        _restore(saved, optimizer)
        raise InvalidInputError(
            f"training diverged in epoch {epoch}: {diverged}; the weights are back to what "
            f"they were before it; try a smaller learning rate (now {optimizer.lr:g})"
        )


class _Runaway:
    """A run whose weights grow by RUNAWAY times while its loss does not fall below the first
    epoch's (SGD(1e4, momentum=0.99) on MNIST: weights of 3e16 at a loss of 78) gets one
    warning saying so, instead of epochs of silence. Legitimate growth (large targets) comes
    with a falling loss."""

    RUNAWAY = 1e4

    def __init__(self, model: Trainable, optimizer: Optimizer) -> None:
        self.model, self.optimizer = model, optimizer
        self.start = self._largest()
        self.first_loss: float | None = None
        self.warned = False

    def _largest(self) -> float:
        xp = self.model.backend.xp
        return max((float(xp.abs(p.data).max()) for p in self.model.parameters()), default=0.0)

    def after_epoch(self, epoch: int, loss: float) -> None:
        if self.first_loss is None:
            self.first_loss = loss
            return
        if self.warned or loss < self.first_loss:
            return
        largest = self._largest()
        if largest > self.RUNAWAY * max(self.start, 1e-3):
            self.warned = True
            warnings.warn(
                f"training is not converging: after epoch {epoch} the largest weight is "
                f"{largest:.3g} (it was {self.start:.3g}) and the loss {loss:.4g} is no lower "
                f"than the first epoch's {self.first_loss:.4g}; try a smaller learning rate "
                f"(now {self.optimizer.lr:g})",
                RuntimeWarning,
                stacklevel=4,
            )


def _described(setting: Any) -> str | None:
    """A schedule or early stopping as its type and settings, for the ranks to compare."""
    if setting is None:
        return None
    values = sorted((k, v) for k, v in vars(setting).items() if isinstance(v, int | float | str))
    return f"{type(setting).__name__}{values}"


@contextmanager
def _every_rank_stops_with(distributed: MPI | None) -> Iterator[None]:
    """Under MPI, any exception ends the whole job at once (``MPI.abort``); alone, it raises."""
    if distributed is None:
        yield
        return
    try:
        yield
    except BaseException as exc:  # KeyboardInterrupt too: the others would still wait
        distributed.abort(exc)


def _split(X: Any, T: Any, fraction: float, seed: int, B: Any) -> tuple[Any, Any, tuple]:
    """(X, T) without a held-out ``fraction``, and the held-out part: rows drawn by a generator
    seeded with ``seed``, each part in its original order."""
    n = X.shape[0]
    held = np.random.default_rng(seed).permutation(n)[: max(1, round(n * fraction))]
    keep = np.ones(n, bool)
    keep[held] = False
    if not keep.any():
        raise InvalidInputError(f"validation_split={fraction} leaves no training samples")
    train, val = B.asarray(np.flatnonzero(keep)), B.asarray(np.sort(held))
    return X[train], T[train], (X[val], T[val])


def _snapshot(model: Trainable, optimizer: Optimizer) -> tuple[list[tuple[Any, Any]], Any]:
    """(live array, copy) of every parameter and optimizer buffer, and the optimizer's step
    counts, for ``_restore``."""
    xp = model.backend.xp
    live = [p.data for p in model.parameters()]
    live += [b for p in model.parameters() for b in optimizer.buffers(p, model.backend)]
    return [(a, xp.array(a, copy=True)) for a in live], optimizer.step_counts()


def _restore(saved: tuple[list[tuple[Any, Any]], Any], optimizer: Optimizer) -> None:
    """Put the copies back into the live arrays, in place (the backends hold on to them)."""
    arrays, counts = saved
    for live, copy in arrays:
        live[...] = copy
    optimizer.set_step_counts(counts)


def _chunk(n: int, batch_size: int) -> int:
    """Samples per ``train_batches`` call or stretch of steps: a whole number of batches, about
    1% of the epoch for the progress bar, but at least 4096 samples so that the call's fixed
    cost (arguments, a team of threads, sizing the threads) stays small next to the work (a
    per-sample step is a few microseconds)."""
    return batch_size * max(1, max(n // 100, 4096) // batch_size)


def _evaluate_arrays(model: Trainable, X: Any, T: Any, loss: Loss | None, batch_size: int) -> dict:
    """Accuracy (and loss) over checked backend arrays, in chunks of ``batch_size``."""
    xp = model.backend.xp
    n = X.shape[0]
    correct = xp.zeros((), dtype=np.int64)
    total = 0.0
    for start in range(0, n, batch_size):
        y = model.outputs(X[start : start + batch_size])
        t = T[start : start + batch_size]
        if model.out_features == 1:
            correct += ((y > 0.5) == (t > 0.5)).sum()
        else:
            correct += (y.argmax(axis=1) == t.argmax(axis=1)).sum()
        if loss is not None:
            value = float(loss.value(model.backend, y, t))
            total += value * y.shape[0] if loss.reduction == "mean" else value
    scores = {"accuracy": float(correct) / max(n, 1)}
    if loss is not None:
        scores["loss"] = total / max(n, 1)
    return scores


def evaluate(
    model: Trainable, X: Any, T: Any, loss: Loss | None = None, batch_size: int = 4096
) -> dict[str, float]:
    """``{"accuracy": ...}`` and, with ``loss``, the mean per-sample ``"loss"`` over (X, T);
    accuracy compares the argmax of outputs and targets (threshold 0.5 for one output)."""
    batch_size = positive_int("batch_size", batch_size)
    X = model.as_inputs(X)
    return _evaluate_arrays(model, X, model.as_targets(T, X.shape[0]), loss, batch_size)
