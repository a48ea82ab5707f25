"""Training checkpoints: everything ``fit`` needs to continue a run exactly.

A checkpoint is an .npz written atomically (``model_file.write_atomically``) after each epoch:
the parameters, the optimizer's buffers, and one JSON member with the rest (the epochs done,
the optimizer's type, settings, learning rate and step counts, the schedule's and early
stopping's state, the shuffling generator's state, the validation split's seed and the
history). Reading checks it against the model and optimizer at hand: another architecture or
another optimizer type is a ModelFileError; another backend or dtype continues with a warning
saying what changes.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from tinynet.errors import ModelFileError
from tinynet.model_file import ModelArchive, write_atomically

FORMAT = "tinynet-checkpoint-1"


@dataclass
class Checkpoint:
    """What ``fit`` keeps between epochs, besides the arrays of the model and optimizer."""

    epoch: int  # epochs done
    rng_state: dict[str, Any]  # the shuffling generator's bit_generator.state
    split_seed: int | None  # the validation split's seed (validation_split > 0)
    history: dict[str, list[float]]
    schedule: dict[str, Any] | None
    early_stopping: dict[str, Any] | None


def _optimizer_settings(optimizer: Any) -> dict[str, Any]:
    """The optimizer's type and hyperparameters (its public, non-lr attributes)."""
    settings = {
        name: value
        for name, value in vars(optimizer).items()
        if not name.startswith("_") and name != "lr"
    }
    return json.loads(json.dumps({"type": type(optimizer).__name__, **settings}))  # as saved


def save(
    path: str | os.PathLike,
    model: Any,
    optimizer: Any,
    state: Checkpoint,
    best: list[Any] | None = None,
) -> None:
    """Write the checkpoint atomically; ModelFileError on any I/O fault. ``best``: the
    parameters early stopping keeps (as the model's), if any."""
    B = model.backend
    params = model.parameters()
    counts = optimizer.step_counts()
    meta = {
        "format": FORMAT,
        "backend": B.name,
        "dtype": str(B.to_numpy(params[0].data).dtype) if params else "float32",
        "shapes": [list(p.data.shape) for p in params],
        "optimizer": _optimizer_settings(optimizer),
        "lr": optimizer.lr,
        "steps": [counts.get(p, 0) for p in params],
        "buffers": list(optimizer.buffers_used()),
        "epoch": state.epoch,
        "rng_state": state.rng_state,
        "split_seed": state.split_seed,
        "history": state.history,
        "schedule": state.schedule,
        "early_stopping": state.early_stopping,
    }
    arrays = {"__checkpoint__": np.array(json.dumps(meta))}
    for i, p in enumerate(params):
        arrays[f"param.{i}"] = B.to_numpy(p.data)
        for name, buffer in zip(optimizer.buffers_used(), optimizer.buffers(p, B), strict=True):
            arrays[f"optimizer.{i}.{name}"] = B.to_numpy(buffer)
    for i, data in enumerate(best or []):
        arrays[f"best.{i}"] = B.to_numpy(data)
    write_atomically(path, lambda f: np.savez(f, **arrays), what="the checkpoint")


def load(
    path: str | os.PathLike, model: Any, optimizer: Any
) -> tuple[Checkpoint, list[np.ndarray] | None]:
    """Put the checkpoint's parameters and optimizer state into ``model`` and ``optimizer``
    (in place) and return the rest, with early stopping's best parameters if it holds them."""
    B = model.backend
    params = model.parameters()
    with ModelArchive(path, what="checkpoint") as archive:
        try:
            meta = json.loads(archive.text("__checkpoint__"))
        except ValueError as exc:
            raise archive.error(f"its metadata is not JSON ({exc})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise archive.error("no checkpoint metadata of format " + FORMAT)
        shapes = [tuple(p.data.shape) for p in params]
        saved_shapes = [tuple(s) for s in meta.get("shapes", [])]
        if saved_shapes != shapes:
            raise archive.error(
                f"it is of another architecture: parameter shapes {saved_shapes}, this model "
                f"has {shapes}"
            )
        settings = _optimizer_settings(optimizer)
        if meta["optimizer"].get("type") != settings["type"]:
            raise archive.error(
                f"it was written by {meta['optimizer'].get('type')}, this run uses "
                f"{settings['type']}"
            )
        changed = sorted(
            name for name, value in settings.items() if meta["optimizer"].get(name) != value
        )
        if changed:
            warnings.warn(
                f"{os.fspath(path)}: continuing with other optimizer settings "
                "("
                + ", ".join(
                    f"{n}: {meta['optimizer'].get(n)!r} -> {settings[n]!r}" for n in changed
                )
                + ")",
                RuntimeWarning,
                stacklevel=3,
            )
        dtype = B.to_numpy(params[0].data).dtype if params else np.dtype("float32")
        if meta.get("backend") != B.name or meta.get("dtype") != str(dtype):
            warnings.warn(
                f"{os.fspath(path)} was written on backend {meta.get('backend')!r} in "
                f"{meta.get('dtype')}; continuing on {B.name!r} in {dtype}: the run goes on "
                "from the same state but rounds differently, so it will not repeat the "
                "original bit for bit",
                RuntimeWarning,
                stacklevel=3,
            )
        names = list(optimizer.buffers_used())
        if meta.get("buffers") != names:
            raise archive.error(f"it holds optimizer buffers {meta.get('buffers')}, not {names}")
        loaded = []
        for i, p in enumerate(params):
            shape = tuple(p.data.shape)
            arrays = [archive.array(f"param.{i}", shape)]
            arrays += [archive.array(f"optimizer.{i}.{name}", shape) for name in names]
            loaded.append(arrays)
        best = None
        if archive.has("best.0") or not params:
            best = [archive.array(f"best.{i}", tuple(p.data.shape)) for i, p in enumerate(params)]
    steps = meta.get("steps", [])
    if len(steps) != len(params) or not all(isinstance(s, int) and s >= 0 for s in steps):
        raise ModelFileError(f"not a tinynet checkpoint: {os.fspath(path)} (bad step counts)")
    for p, (data, *buffers) in zip(params, loaded, strict=True):
        p.data[...] = B.asarray(data, p.data.dtype)
        for live, saved in zip(optimizer.buffers(p, B), buffers, strict=True):
            live[...] = B.asarray(saved, live.dtype)
    optimizer.set_step_counts(dict(zip(params, steps, strict=True)))
    optimizer.lr = float(meta["lr"])
    state = Checkpoint(
        epoch=int(meta["epoch"]),
        rng_state=meta["rng_state"],
        split_seed=meta.get("split_seed"),
        history=meta.get("history", {}),
        schedule=meta.get("schedule"),
        early_stopping=meta.get("early_stopping"),
    )
    return state, best
