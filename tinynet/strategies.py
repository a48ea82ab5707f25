"""How the trainer trains a stretch of an epoch: one strategy per epoch, chosen once by
``choose``, called through one method. The loop over stretches, the progress bar and all that
happens between epochs live in ``training.fit``; a strategy knows only how the rows of one
stretch become updates.

| strategy | chosen when | a stretch |
|---|---|---|
| ``KernelByKernel`` | otherwise | ``model.step`` per batch: the backend's kernels one by one |
| ``Fused`` | the backend trains the model's batches itself (numba: always) | one ``train_batches`` call |
| ``Sharded`` | under MPI, kernel by kernel | each rank's shard of each batch, the gradients averaged |
| ``ShardedFused`` | under MPI, a backend with a distributed fused epoch | one ``train_batches_distributed`` call |
| ``LocalSGD`` | under MPI with ``average_every`` | each rank's own steps, fused where it can; weights averaged |

A new strategy is a class with ``train(start, stop)`` and a line in ``choose``; the loop does
not change.
"""  # noqa: E501

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from tinynet.backend import Backend, EpochSpec
from tinynet.layers import Parameter
from tinynet.losses import Loss
from tinynet.optim import Optimizer

if TYPE_CHECKING:
    from tinynet.distributed import MPI


class Trainable(Protocol):
    """What the trainer and its strategies need of a model; ``tinynet.MLP`` is one. Neither
    imports the model: the dependency runs one way, model -> training -> strategies."""

    backend: Backend
    out_features: int

    def check_loss(self, loss: Loss) -> None: ...

    def as_inputs(self, x: Any) -> Any: ...  # a checked backend array (batch, in)

    def as_targets(self, t: Any, n: int) -> Any: ...  # a checked backend array (n, out)

    def gradients(self, x: Any, t: Any, loss: Loss) -> Any: ...  # grads set; 0-d loss

    def step(self, x: Any, t: Any, loss: Loss, optimizer: Optimizer) -> Any: ...  # 0-d loss

    def outputs(self, x: Any) -> Any: ...  # forward on a checked batch, nothing kept

    def parameters(self) -> list[Parameter]: ...

    def epoch_spec(self, loss: Loss, optimizer: Optimizer) -> EpochSpec | None: ...


@dataclass
class Epoch:
    """One epoch of training: the model, its data, and the order the rows come in (None: as
    stored)."""

    model: Trainable
    X: Any
    T: Any
    loss: Loss
    optimizer: Optimizer
    batch_size: int
    order: np.ndarray | None  # the epoch's permutation, on the host
    order_on_device: Any  # the same, uploaded once

    def rows(self, start: int, stop: int) -> Any:
        """Positions start..stop of the epoch's order, as backend indices into X."""
        if self.order_on_device is None:
            return self.model.backend.xp.arange(start, stop)
        return self.order_on_device[start:stop]


class Strategy:
    """Trains rows ``start``..``stop`` of an epoch's order; returns their loss sum (a float,
    or a 0-d array still on the device)."""

    def __init__(self, epoch: Epoch) -> None:
        self.epoch = epoch
        self.per_sample = epoch.loss.reduction == "mean"  # each step's loss is a batch mean

    def train(self, start: int, stop: int) -> Any:
        raise NotImplementedError


class KernelByKernel(Strategy):
    """model.step per batch, on the threads the backend's sizer gives the stretch."""

    def train(self, start: int, stop: int) -> Any:
        e, B = self.epoch, self.epoch.model.backend
        total = B.xp.zeros((), dtype=np.float64)
        with B.step_threads((id(e.model), e.batch_size), stop - start):
            for first in range(start, stop, e.batch_size):
                last = min(first + e.batch_size, stop)
                if e.order_on_device is None:
                    xb, tb = e.X[first:last], e.T[first:last]
                else:
                    idx = e.order_on_device[first:last]
                    xb, tb = e.X[idx], e.T[idx]
                value = e.model.step(xb, tb, e.loss, e.optimizer)
                total += value * (last - first) if self.per_sample else value
        return total


class _Counted(Strategy):
    """A strategy whose backend applies the updates itself: the optimizer counts them, and the
    spec the backend reads takes its count from the optimizer before each call (one count)."""

    def __init__(self, epoch: Epoch, spec: EpochSpec) -> None:
        super().__init__(epoch)
        self.spec = spec

    def _before(self) -> None:
        self.spec.step = self.epoch.optimizer.common_step(self.epoch.model.parameters())

    def _after(self, rows: int, batch_size: int) -> None:
        updates = -(-rows // batch_size)  # the batches it trained, the last one partial
        self.epoch.optimizer.advance(self.epoch.model.parameters(), updates)


class Fused(_Counted):
    """One backend.train_batches call per stretch."""

    def train(self, start: int, stop: int) -> Any:
        return self.run(self.epoch.rows(start, stop), stop - start, self.epoch.batch_size)

    def run(self, idx: Any, rows: int, batch_size: int) -> Any:
        """The ``rows`` rows X[idx] in steps of ``batch_size``, in one backend call."""
        e = self.epoch
        self._before()
        total = e.model.backend.train_batches(self.spec, e.X, e.T, idx, batch_size)
        self._after(rows, batch_size)
        return total


class ShardedFused(_Counted):
    """One backend.train_batches_distributed call per stretch: this rank's shard of each
    batch, the gradients summed over the ranks inside the backend's epoch."""

    def __init__(self, epoch: Epoch, spec: EpochSpec, distributed: MPI) -> None:
        super().__init__(epoch, spec)
        self.distributed = distributed

    def train(self, start: int, stop: int) -> Any:
        e = self.epoch
        self._before()
        with self.distributed.watchdog.waiting("a stretch of compiled steps"):
            total = e.model.backend.train_batches_distributed(
                self.spec, e.X, e.T, e.rows(start, stop), e.batch_size, self.distributed
            )
        self._after(stop - start, e.batch_size)
        return total


class Sharded(Strategy):
    """Kernel by kernel under MPI: this rank's shard of each global batch, the gradients
    averaged over the ranks (one allreduce a step), the same update everywhere."""

    def __init__(self, epoch: Epoch, distributed: MPI) -> None:
        super().__init__(epoch)
        self.distributed = distributed

    def train(self, start: int, stop: int) -> float:
        e, mpi = self.epoch, self.distributed
        B, params = e.model.backend, e.model.parameters()
        total = 0.0
        for first in range(start, stop, e.batch_size):
            last = min(first + e.batch_size, stop)
            lo, hi = mpi.shard(first, last)
            if hi > lo:
                idx = e.rows(lo, hi)
                value = float(e.model.gradients(e.X[idx], e.T[idx], e.loss))
                total += value * (hi - lo) if self.per_sample else value
            else:  # a last batch smaller than the ranks: nothing of it here
                for p in params:
                    p.grad = B.xp.zeros_like(p.data)
            weight = (hi - lo) / (last - first) if self.per_sample else 1.0
            mpi.average_gradients(params, weight, B)
            e.optimizer.step(params, B)
        return total


class LocalSGD(Strategy):
    """Local SGD: this rank's shard of each global batch is its own step (batch_size / ranks
    rows), fused where the backend can (``spec``), and every ``average_every`` steps the ranks
    average their weights and optimizer state."""

    def __init__(self, epoch: Epoch, spec: EpochSpec | None, distributed: MPI) -> None:
        super().__init__(epoch)
        self.distributed = distributed
        self.local = Fused(epoch, spec) if spec is not None else None

    def train(self, start: int, stop: int) -> float:
        e, mpi = self.epoch, self.distributed
        B, params = e.model.backend, e.model.parameters()
        local_batch = e.batch_size // mpi.size
        rows_per_average = mpi.average_every * e.batch_size
        order = np.arange(e.X.shape[0]) if e.order is None else e.order
        total = 0.0
        for first in range(start, stop, rows_per_average):
            last = min(first + rows_per_average, stop)
            rows = mpi.local_rows(order, first, last, e.batch_size)
            if self.local is not None:
                total += float(self.local.run(B.asarray(rows), len(rows), local_batch))
            else:
                for i in range(0, len(rows), local_batch):
                    idx = B.asarray(rows[i : i + local_batch])
                    value = float(e.model.step(e.X[idx], e.T[idx], e.loss, e.optimizer))
                    total += value * len(idx) if self.per_sample else value
            mpi.average_parameters(params, e.optimizer, B)
        return total


def choose(epoch: Epoch, distributed: MPI | None) -> Strategy:
    """The strategy for this epoch: fused where the backend can train the model's batches
    itself (the spec is built per epoch, so a learning rate changed between epochs counts),
    sharded under MPI."""
    model, B = epoch.model, epoch.model.backend
    spec = model.epoch_spec(epoch.loss, epoch.optimizer)
    if distributed is None:
        if spec is not None and B.can_train_batches(spec, epoch.batch_size):
            return Fused(epoch, spec)
        return KernelByKernel(epoch)
    if distributed.average_every is not None:  # each rank's steps: the usual fused epochs
        local_batch = epoch.batch_size // distributed.size
        fused = spec is not None and B.can_train_batches(spec, local_batch)
        return LocalSGD(epoch, spec if fused else None, distributed)
    if spec is not None and B.can_train_batches_distributed(spec, distributed):
        return ShardedFused(epoch, spec, distributed)
    return Sharded(epoch, distributed)
