"""The backends' data-parallel epochs ask of the run only what tinynet.backend.Collective
declares: two ranks as two threads of this process (tests/collective_fake.py) train as one
process does on the whole batch."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from collective_fake import ThreadRanks, run_ranks

import tinynet as tn
from tinynet.backend import Collective

OPTIMIZERS = {
    "sgd": lambda: tn.SGD(0.1),
    "momentum": lambda: tn.SGD(0.05, momentum=0.9),
    "adam": lambda: tn.Adam(0.01),
}


def test_mpi_implements_every_member_of_the_collective():
    """Each method of the Protocol with its parameters, each attribute set by MPI()."""
    pytest.importorskip("mpi4py")
    from tinynet.distributed import MPI

    methods = [n for n, _ in inspect.getmembers(Collective, inspect.isfunction) if n[0] != "_"]
    assert {"shard", "allreduce", "allreduce_on_device", "compiled_allreduce"} <= set(methods)
    for name in methods:
        ours, declared = (inspect.signature(getattr(c, name)) for c in (MPI, Collective))
        assert list(ours.parameters) == list(declared.parameters), name
    set_by_init = MPI.__init__.__code__.co_names  # the attributes that self.x = ... names
    assert [a for a in Collective.__annotations__ if a not in set_by_init] == []


def _model(seed: int = 0) -> tn.MLP:
    return tn.MLP.from_sizes([12, 9, 3], "tanh", "softmax", seed=seed, dtype="float64")


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.parametrize("batch", [8, 7])  # 7: shards of 3 and 4 rows
def test_two_ranks_in_one_process_train_as_one_process_on_the_whole_batch(optimizer, batch):
    """numba's compiled distributed epoch, its allreduce the fake's C callback: rank 0 takes
    rows [0, b/2) of each batch, rank 1 the rest; one sum a step. Float64, so the only
    difference from one process is the order of the gradient sums (bound: 1e-12 of the
    weights' scale, many times the few ulps that reordering 12 terms can move)."""
    pytest.importorskip("numba")
    rng = np.random.default_rng(1)
    x, labels = rng.normal(size=(61, 12)), rng.integers(0, 3, size=61)
    order = rng.permutation(61).astype(np.int64)
    loss = tn.CrossEntropy()
    with tn.use_backend("numba") as B, tn.use_threads(1):
        whole = _model()
        X, T = whole.as_inputs(x), whole.as_targets(labels, len(x))
        spec = whole.epoch_spec(loss, OPTIMIZERS[optimizer]())
        expected_loss = float(B.train_batches(spec, X, T, order, batch))

        group = ThreadRanks(2)
        nets = [_model() for _ in group.ranks]
        specs = [net.epoch_spec(loss, OPTIMIZERS[optimizer]()) for net in nets]
        assert all(B.can_train_batches_distributed(specs[r.rank], r) for r in group.ranks)
        losses = run_ranks(
            lambda rank: float(
                B.train_batches_distributed(specs[rank.rank], X, T, order, batch, rank)
            ),
            group.ranks,
        )
    steps = -(-61 // batch)
    assert group.calls == [steps, steps]  # one sum a step, every step
    want = np.concatenate([a.ravel() for pair in whole.get_weights() for a in pair])
    for net in nets:
        got = np.concatenate([a.ravel() for pair in net.get_weights() for a in pair])
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * np.abs(want).max())
    assert sum(losses) == pytest.approx(expected_loss, rel=1e-12)


def test_a_failed_compiled_allreduce_stops_the_epoch_with_an_error():
    """The fake refuses an unknown operation (as MPI returns an error code): the compiled
    epoch raises instead of training on unsummed gradients."""
    pytest.importorskip("numba")
    with tn.use_backend("numba") as B, tn.use_threads(1):
        group = ThreadRanks(2)
        nets = [_model() for _ in group.ranks]
        specs = [net.epoch_spec(tn.CrossEntropy(), tn.SGD(0.1)) for net in nets]
        X = nets[0].as_inputs(np.ones((8, 12)))
        T = nets[0].as_targets(np.zeros(8, int), 8)
        order = np.arange(8, dtype=np.int64)

        class WrongOperation:
            def __init__(self, rank):
                self.rank, self.size, self._rank = rank.rank, rank.size, rank

            def compiled_allreduce(self, dtype):
                address, comm, datatype, _ = self._rank.compiled_allreduce(dtype)
                return address, comm, datatype, np.int32(99)

        with pytest.raises(RuntimeError, match="MPI_Allreduce failed"):
            run_ranks(
                lambda rank: B.train_batches_distributed(
                    specs[rank.rank], X, T, order, 8, WrongOperation(rank)
                ),
                group.ranks,
            )
