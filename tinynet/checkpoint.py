"""Training checkpoints: everything ``fit`` needs to continue a run exactly.

A checkpoint is an .npz written atomically (``model_file.write_atomically``) after each epoch:
the parameters, the optimizer's buffers, the history (one float64 array per key), and one
small JSON member with the rest (the epochs done, the architecture and loss, the optimizer's
type, settings, learning rate and step counts, the schedule's and early stopping's state, the
shuffling generator's state, the validation split's seed). Its size does not grow with the
epochs, so the reader's limit on it holds for any run; ``save`` refuses to write one it would
not read.

Reading (``read``) checks everything against the model, loss, optimizer, schedule and early
stopping at hand before anything is changed: another architecture, activation, loss, optimizer
type or schedule type, and any malformed value, is a ModelFileError that leaves the model as it
was; another backend or dtype continues with a warning saying what changes. ``apply`` then puts
the state in place.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tinynet import model_file
from tinynet.errors import ModelFileError
from tinynet.model_file import ModelArchive, write_atomically

FORMAT = "tinynet-checkpoint-2"
# what a layer's config says about the function the network computes (not its init or dtype)
ARCHITECTURE_KEYS = ("type", "in_features", "out_features", "activation", "bias", "alpha")
META_KEYS = (
    "shapes", "architecture", "loss", "optimizer", "lr", "steps", "buffers", "epoch",
    "rng_state", "history", "schedule", "early_stopping", "best",
)  # fmt: skip


@dataclass
class Checkpoint:
    """What ``fit`` keeps between epochs, besides the arrays of the model and optimizer."""

    epoch: int  # epochs done
    rng_state: dict[str, Any]  # the shuffling generator's bit_generator.state
    split_seed: int | None  # the validation split's seed (validation_split > 0)
    history: dict[str, list[float]]
    schedule: dict[str, Any] | None
    early_stopping: dict[str, Any] | None


@dataclass
class Saved:
    """A checkpoint read and checked, not yet applied: ``state`` for fit, the arrays for
    ``apply``."""

    state: Checkpoint
    lr: float
    steps: list[int]
    arrays: list[list[np.ndarray]]  # per parameter: its data, then its optimizer buffers
    best: list[np.ndarray] | None  # early stopping's best parameters, if kept
    warnings: list[str] = field(default_factory=list)


def _optimizer_settings(optimizer: Any) -> dict[str, Any]:
    """The optimizer's type and hyperparameters (its public, non-lr attributes)."""
    settings = {
        name: value
        for name, value in vars(optimizer).items()
        if not name.startswith("_") and name != "lr"
    }
    return json.loads(json.dumps({"type": type(optimizer).__name__, **settings}))  # as saved


def _architecture(model: Any) -> list[dict[str, Any]]:
    configs = [layer.config() for layer in model.layers]
    return [{k: c[k] for k in ARCHITECTURE_KEYS if k in c} | _rescaling(c) for c in configs]


def _rescaling(config: dict[str, Any]) -> dict[str, Any]:
    return {k: config[k] for k in ("scale", "offset") if k in config}


def save(
    path: str | os.PathLike,
    model: Any,
    optimizer: Any,
    state: Checkpoint,
    best: list[Any] | None = None,
    loss: Any = None,
) -> None:
    """Write the checkpoint atomically; ModelFileError on any I/O fault, and before writing
    when its metadata would pass the reader's limit. ``best``: the parameters early stopping
    keeps (as the model's), if any; ``loss``: the run's loss, which a resume must match."""
    B = model.backend
    params = model.parameters()
    counts = optimizer.step_counts()
    lengths = {len(values) for values in state.history.values()}
    if lengths - {state.epoch}:
        raise ValueError(f"history lengths {sorted(lengths)} for {state.epoch} epochs")
    keys = list(state.history)
    meta = {
        "format": FORMAT,
        "backend": B.name,
        "dtype": str(B.to_numpy(params[0].data).dtype) if params else "float32",
        "shapes": [list(p.data.shape) for p in params],
        "architecture": _architecture(model),
        "loss": repr(loss) if loss is not None else None,
        "optimizer": _optimizer_settings(optimizer),
        "lr": optimizer.lr,
        "steps": [counts.get(p, 0) for p in params],
        "buffers": list(optimizer.buffers_used()),
        "epoch": state.epoch,
        "rng_state": state.rng_state,
        "split_seed": state.split_seed,
        "history": keys,
        "schedule": state.schedule,
        "early_stopping": state.early_stopping,
        "best": best is not None,
    }
    text = json.dumps(meta)
    size = len(np.array(text).tobytes()) + 128  # as the reader measures the member
    if size > model_file.MAX_TEXT_BYTES:
        raise ModelFileError(
            f"cannot write the checkpoint {os.fspath(path)}: its metadata would be {size:,} "
            f"bytes, over the {model_file.MAX_TEXT_BYTES:,} a reader accepts"
        )
    arrays = {"__checkpoint__": np.array(text)}
    for i, key in enumerate(keys):
        arrays[f"history.{i}"] = np.asarray(state.history[key], dtype=np.float64)
    for i, p in enumerate(params):
        arrays[f"param.{i}"] = B.to_numpy(p.data)
        for name, buffer in zip(optimizer.buffers_used(), optimizer.buffers(p, B), strict=True):
            arrays[f"optimizer.{i}.{name}"] = B.to_numpy(buffer)
    for i, data in enumerate(best or []):
        arrays[f"best.{i}"] = B.to_numpy(data)
    write_atomically(path, lambda f: np.savez(f, **arrays), what="the checkpoint")


def _is_count(value: Any, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def read(
    path: str | os.PathLike,
    model: Any,
    optimizer: Any,
    loss: Any = None,
    schedule: Any = None,
    early_stopping: Any = None,
) -> Saved:
    """The checkpoint at ``path``, checked against this run; nothing is changed. A
    ModelFileError names the first thing that does not fit."""
    params = model.parameters()
    shapes = [tuple(p.data.shape) for p in params]
    with ModelArchive(path, what="checkpoint") as archive:
        meta = _metadata(archive, path)
        _check_model(archive, meta, model, shapes, loss)
        lr, steps, buffers = _check_optimizer(archive, meta, optimizer, len(params))
        state = _run_state(archive, meta, schedule, early_stopping)
        arrays, best = _weights(archive, meta, shapes, buffers)
    return Saved(state, float(lr), steps, arrays, best, _notes(path, meta, model, optimizer))


def _need(archive: ModelArchive, ok: bool, reason: str) -> None:
    if not ok:
        raise archive.error(reason)


def _metadata(archive: ModelArchive, path: str | os.PathLike) -> dict:
    """The checkpoint's JSON metadata, of this format and with every key."""
    try:
        meta = json.loads(archive.text("__checkpoint__"))
    except (ValueError, RecursionError) as exc:
        raise archive.error(f"its metadata is not JSON ({exc})") from None
    _need(archive, isinstance(meta, dict), "its metadata is not a JSON object")
    found = meta.get("format")
    if isinstance(found, str) and found.startswith("tinynet-checkpoint-") and found != FORMAT:
        raise ModelFileError(
            f"{os.fspath(path)} is a checkpoint of format {found}; this tinynet reads "
            f"{FORMAT} (checkpoints do not carry over between these versions: start the "
            "run again, or resume it with the tinynet that wrote it)"
        )
    _need(archive, found == FORMAT, "no checkpoint metadata of format " + FORMAT)
    missing = [key for key in META_KEYS if key not in meta]
    _need(archive, not missing, f"its metadata lacks {', '.join(missing)}")
    return meta


def _check_model(
    archive: ModelArchive, meta: dict, model: Any, shapes: list[tuple], loss: Any
) -> None:
    """The same parameter shapes, layers (activations included) and loss as this run's."""
    saved_shapes = meta["shapes"]
    _need(
        archive,
        isinstance(saved_shapes, list)
        and all(isinstance(s, list) and all(_is_count(d) for d in s) for s in saved_shapes),
        "bad parameter shapes",
    )
    saved_shapes = [tuple(s) for s in saved_shapes]
    _need(
        archive,
        saved_shapes == shapes,
        f"it is of another architecture: parameter shapes {saved_shapes}, this model has {shapes}",
    )
    architecture = _architecture(model)
    if meta["architecture"] != architecture:
        theirs = meta["architecture"] if isinstance(meta["architecture"], list) else []
        diffs = [
            f"layer {i}: {k} {a.get(k)!r} in the checkpoint, {b.get(k)!r} here"
            for i, (a, b) in enumerate(zip(theirs, architecture, strict=False))
            if isinstance(a, dict)
            for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k)
        ]
        raise archive.error(
            "it is of another architecture: " + ("; ".join(diffs) or "other layers")
        )
    if loss is not None and meta["loss"] is not None:
        _need(
            archive,
            meta["loss"] == repr(loss),
            f"it was trained with loss {meta['loss']}, this run uses {loss!r}",
        )


def _check_optimizer(
    archive: ModelArchive, meta: dict, optimizer: Any, n_params: int
) -> tuple[float, list, list[str]]:
    """(learning rate, step counts, buffer names) of the same type of optimizer as this run's."""
    saved = meta["optimizer"]
    _need(archive, isinstance(saved, dict), "bad optimizer settings")
    kind = _optimizer_settings(optimizer)["type"]
    _need(
        archive,
        saved.get("type") == kind,
        f"it was written by {saved.get('type')}, this run uses {kind}",
    )
    lr = meta["lr"]
    _need(archive, _is_number(lr) and math.isfinite(lr) and lr >= 0, f"bad learning rate {lr!r}")
    steps = meta["steps"]
    _need(
        archive,
        isinstance(steps, list) and len(steps) == n_params and all(map(_is_count, steps)),
        "bad step counts",
    )
    names = list(optimizer.buffers_used())
    _need(
        archive,
        meta["buffers"] == names,
        f"it holds optimizer buffers {meta['buffers']}, not {names}",
    )
    return lr, steps, names


def _run_state(archive: ModelArchive, meta: dict, schedule: Any, early_stopping: Any) -> Checkpoint:
    """Where the run stood: epoch, shuffling generator, split seed, history, the schedule's and
    early stopping's states (each checked against this run's kind where it has one)."""
    epoch = meta["epoch"]
    _need(archive, _is_count(epoch), f"bad epoch count {epoch!r}")
    rng_state = meta["rng_state"]
    try:  # the one check that says a state is what the generator accepts
        np.random.default_rng().bit_generator.state = rng_state
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError):
        raise archive.error("bad shuffling generator state") from None
    split_seed = meta.get("split_seed")
    _need(archive, split_seed is None or _is_count(split_seed), f"bad split seed {split_seed!r}")
    keys = meta["history"]
    _need(
        archive,
        isinstance(keys, list)
        and all(isinstance(k, str) for k in keys)
        and len(set(keys)) == len(keys),
        "bad history keys",
    )
    history = {
        key: archive.array(f"history.{i}", (epoch,)).astype(float).tolist()
        for i, key in enumerate(keys)
    }
    schedule_state = meta["schedule"]
    if schedule is not None and schedule_state is not None:
        expected = schedule.state()
        saved_type = schedule_state.get("type") if isinstance(schedule_state, dict) else "?"
        _need(
            archive,
            isinstance(schedule_state, dict) and saved_type == expected["type"],
            f"it holds the state of schedule {saved_type}, this run uses {expected['type']}",
        )
        _need(
            archive,
            set(schedule_state) == set(expected)
            and all(_is_number(v) or v is None for k, v in schedule_state.items() if k != "type"),
            "bad schedule state",
        )
    stopping = meta["early_stopping"]
    if early_stopping is not None and stopping is not None:
        _need(
            archive,
            isinstance(stopping, dict)
            and _is_number(stopping.get("best"))
            and _is_count(stopping.get("wait"))
            and all(
                stopping.get(k) is None or _is_count(stopping.get(k), 1)
                for k in ("best_epoch", "stopped_epoch")
            ),
            "bad early stopping state",
        )
    return Checkpoint(
        epoch=epoch,
        rng_state=rng_state,
        split_seed=split_seed,
        history=history,
        schedule=schedule_state,
        early_stopping=stopping,
    )


def _weights(
    archive: ModelArchive, meta: dict, shapes: list[tuple], buffers: list[str]
) -> tuple[list, list | None]:
    """Each parameter with its optimizer buffers, and the best epoch's weights if saved; all
    finite."""
    arrays = [
        [archive.array(f"param.{i}", shape)]
        + [archive.array(f"optimizer.{i}.{name}", shape) for name in buffers]
        for i, shape in enumerate(shapes)
    ]
    best = None
    if meta["best"] is True:
        best = [archive.array(f"best.{i}", shape) for i, shape in enumerate(shapes)]
    for values in [*(a for group in arrays for a in group), *(best or [])]:
        _need(archive, bool(np.isfinite(values).all()), "it holds weights that are NaN or inf")
    return arrays, best


def _notes(path: str | os.PathLike, meta: dict, model: Any, optimizer: Any) -> list[str]:
    """What continues differently from the run that wrote the checkpoint: other optimizer
    settings, another backend or dtype."""
    B, params = model.backend, model.parameters()
    dtype = B.to_numpy(params[0].data).dtype if params else np.dtype("float32")
    saved, settings = meta["optimizer"], _optimizer_settings(optimizer)
    notes = []
    changed = sorted(name for name, value in settings.items() if saved.get(name) != value)
    if changed:
        notes.append(
            f"{os.fspath(path)}: continuing with other optimizer settings ("
            + ", ".join(f"{n}: {saved.get(n)!r} -> {settings[n]!r}" for n in changed)
            + ")"
        )
    if meta.get("backend") != B.name or meta.get("dtype") != str(dtype):
        notes.append(
            f"{os.fspath(path)} was written on backend {meta.get('backend')!r} in "
            f"{meta.get('dtype')}; continuing on {B.name!r} in {dtype}: the run goes on "
            "from the same state but rounds differently, so it will not repeat the "
            "original bit for bit"
        )
    return notes


def apply(saved: Saved, model: Any, optimizer: Any) -> None:
    """Put a checked checkpoint's parameters, optimizer buffers, step counts and learning
    rate into ``model`` and ``optimizer``."""
    for note in saved.warnings:
        warnings.warn(note, RuntimeWarning, stacklevel=4)
    B = model.backend
    params = model.parameters()
    for p, (data, *buffers) in zip(params, saved.arrays, strict=True):
        p.data[...] = B.asarray(data, p.data.dtype)
        for live, kept in zip(optimizer.buffers(p, B), buffers, strict=True):
            live[...] = B.asarray(kept, live.dtype)
    optimizer.set_step_counts(dict(zip(params, saved.steps, strict=True)))
    optimizer.lr = saved.lr


def load(
    path: str | os.PathLike, model: Any, optimizer: Any, **against: Any
) -> tuple[Checkpoint, list[np.ndarray] | None]:
    """``read`` (checked ``against`` the run's loss, schedule and early stopping) then
    ``apply``: the model and optimizer continue from the checkpoint; the rest (epochs done,
    history, schedule and early stopping state) and early stopping's best parameters, if kept,
    are returned."""
    saved = read(path, model, optimizer, **against)
    apply(saved, model, optimizer)
    return saved.state, saved.best
