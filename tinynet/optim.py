"""Optimizers: SGD (momentum, Nesterov, weight decay), Adam and AdamW, with PyTorch's semantics.

An optimizer owns its state: per parameter, its buffers (momentum velocity; Adam's moments) and
its step count, created as zeros on the parameter's backend at the first update. The update
rules themselves are kernels of each backend (``sgd_update``, ``adam_update``), defined once
per backend.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tinynet.errors import InvalidInputError, checked_number
from tinynet.layers import Parameter


class Optimizer:
    """What every optimizer shares: a learning rate (changed between steps by schedules or by
    hand) and per-parameter state."""

    # the names of the buffers each parameter gets, each shaped like the parameter
    BUFFERS: tuple[str, ...] = ()

    def __init__(self, lr: float) -> None:
        self.lr = checked_number("learning rate", lr, 0.0, low_open=True)
        self._state: dict[Parameter, dict[str, Any]] = {}

    def state(self, p: Parameter, backend: Any) -> dict[str, Any]:
        """p's state: its buffers (zeros at first) and "step", the updates applied to it."""
        state = self._state.get(p)
        if state is None:
            zeros = backend.xp.zeros_like
            state = self._state[p] = {name: zeros(p.data) for name in self.buffers_used()}
            state["step"] = 0
        return state

    def buffers_used(self) -> tuple[str, ...]:
        """The buffers this configuration needs (SGD without momentum: none)."""
        return self.BUFFERS

    def buffers(self, p: Parameter, backend: Any) -> list[Any]:
        """p's buffers, in BUFFERS order."""
        state = self.state(p, backend)
        return [state[name] for name in self.buffers_used()]

    def step_counts(self) -> dict[Parameter, int]:
        """Each parameter's update count (for a rollback: see training.fit)."""
        return {p: state["step"] for p, state in self._state.items()}

    def set_step_counts(self, counts: dict[Parameter, int]) -> None:
        for p, state in self._state.items():
            state["step"] = counts.get(p, 0)

    def common_step(self, params: Iterable[Parameter]) -> int:
        """The update count the unfrozen ``params`` share (what a fused epoch's Adam bias
        correction starts from); 0 before their first update."""
        steps = [self._state[p]["step"] if p in self._state else 0 for p in params if not p.frozen]
        return max(steps, default=0)

    def advance(self, params: Iterable[Parameter], updates: int) -> None:
        """Count ``updates`` updates a backend's fused epoch applied to the unfrozen ``params``."""
        for p in params:
            if not p.frozen and p in self._state:
                self._state[p]["step"] += updates

    def step(self, params: Iterable[Parameter], backend: Any) -> None:
        """One update of every parameter that has a gradient and is not frozen."""
        for p in params:
            if p.frozen or p.grad is None:
                continue
            state = self.state(p, backend)
            state["step"] += 1
            self._update(p, state, backend)

    def _update(self, p: Parameter, state: dict[str, Any], backend: Any) -> None:
        raise NotImplementedError


class SGD(Optimizer):
    """g <- g + weight_decay w; with momentum m: v <- m v + g (v starts at 0), and the step
    d = v, or g + m v with nesterov; w <- w - lr d. Without momentum, d = g.
    PyTorch's torch.optim.SGD (dampening 0)."""

    BUFFERS = ("velocity",)

    def __init__(
        self,
        lr: float,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(lr)
        self.momentum = checked_number("momentum", momentum, 0.0, 1.0)
        if not isinstance(nesterov, bool):
            raise InvalidInputError(f"nesterov must be True or False, got {nesterov!r}")
        if nesterov and not self.momentum:
            raise InvalidInputError("nesterov needs a momentum above 0")
        self.nesterov = nesterov
        self.weight_decay = checked_number("weight_decay", weight_decay, 0.0)

    def buffers_used(self) -> tuple[str, ...]:
        return self.BUFFERS if self.momentum else ()

    def velocity(self, p: Parameter, backend: Any) -> Any:
        """The momentum buffer of ``p`` (zeros at first), or None without momentum."""
        return self.state(p, backend)["velocity"] if self.momentum else None

    def _update(self, p: Parameter, state: dict[str, Any], backend: Any) -> None:
        backend.sgd_update(
            p.data,
            p.grad,
            self.lr,
            state.get("velocity"),
            self.momentum,
            self.nesterov,
            self.weight_decay,
        )

    def __repr__(self) -> str:
        extra = "".join(
            f", {name}={value!r}"
            for name, value, default in (
                ("nesterov", self.nesterov, False),
                ("weight_decay", self.weight_decay, 0.0),
            )
            if value != default
        )
        return f"SGD(lr={self.lr:g}, momentum={self.momentum:g}{extra})"


class Adam(Optimizer):
    """Adam (Kingma and Ba) with PyTorch's semantics: g <- g + weight_decay w (L2 in the
    gradient); m <- b1 m + (1 - b1) g; v <- b2 v + (1 - b2) g^2; at step t,
    w <- w - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)."""

    BUFFERS = ("m", "v")
    DECOUPLED = False

    def __init__(
        self,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(lr)
        if not (isinstance(betas, tuple | list) and len(betas) == 2):
            raise InvalidInputError(f"betas must be two numbers in [0, 1), got {betas!r}")
        self.betas = (
            checked_number("betas[0]", betas[0], 0.0, 1.0),
            checked_number("betas[1]", betas[1], 0.0, 1.0),
        )
        self.eps = checked_number("eps", eps, 0.0, low_open=True)
        self.weight_decay = checked_number("weight_decay", weight_decay, 0.0)

    def _update(self, p: Parameter, state: dict[str, Any], backend: Any) -> None:
        backend.adam_update(
            p.data,
            p.grad,
            state["m"],
            state["v"],
            self.lr,
            self.betas,
            self.eps,
            state["step"],
            self.weight_decay,
            self.DECOUPLED,
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(lr={self.lr:g}, betas=({self.betas[0]:g}, "
            f"{self.betas[1]:g}), eps={self.eps:g}, weight_decay={self.weight_decay:g})"
        )


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov and Hutter), as torch.optim.AdamW: first
    w <- w (1 - lr weight_decay), then Adam's step without decay in the gradient."""

    DECOUPLED = True

    def __init__(
        self,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ) -> None:
        super().__init__(lr, betas, eps, weight_decay)
