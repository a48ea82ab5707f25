"""scikit-learn estimators trained by tinynet: ``MLPClassifier`` and ``MLPRegressor``.

Drop-in for ``sklearn.neural_network``'s estimators of the same names where the meaning is the
same (parameter names, attributes, the ``adam``/``sgd`` solvers), on any tinynet backend
(``backend="numba"``; None: tinynet's default). Needs ``pip install "tinynet-mlp[sklearn]"``;
``import tinynet`` does not import this module.

What differs from scikit-learn's MLP:
- ``alpha`` (L2) becomes the optimizer's weight decay ``alpha / batch_size``, the gradient
  scikit-learn's penalty adds per batch, and applies to the biases too.
- ``loss_curve_`` holds the data loss without the penalty.
- ``solver="lbfgs"``, ``learning_rate`` and ``power_t`` do not exist here.
- Pickles keep the weights, not the optimizer's moments: a ``warm_start`` fit after unpickling
  starts its optimizer afresh.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from numbers import Integral
from typing import Any

import numpy as np

from tinynet.system import install_hint

try:
    import sklearn  # noqa: F401
except ImportError as exc:  # name the extra, as the onnx and torch integrations do
    raise ImportError(f"tinynet.sklearn needs scikit-learn: {install_hint('sklearn')}") from exc

from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

import tinynet as tn
from tinynet.errors import checked_number, positive_int

# scikit-learn's activation names, and tinynet's own
ACTIVATIONS = {"identity": "identity", "logistic": "sigmoid", "tanh": "tanh", "relu": "relu"}
ACTIVATIONS |= {name: name for name in ("sigmoid", "leaky_relu")}
SEED_BOUND = 2**31 - 1


class _BaseMLP(BaseEstimator):
    """What the classifier and the regressor share: parameters, the network, the training."""

    # set by the subclasses: the output layer's activation and the loss
    _output_activation = "identity"

    def __init__(
        self,
        hidden_layer_sizes: tuple[int, ...] | int = (100,),
        activation: str = "relu",
        *,
        solver: str = "adam",
        alpha: float = 0.0001,
        batch_size: int | str = "auto",
        learning_rate_init: float = 0.001,
        max_iter: int = 200,
        shuffle: bool = True,
        random_state: int | np.random.RandomState | None = None,
        tol: float = 1e-4,
        verbose: bool = False,
        warm_start: bool = False,
        momentum: float = 0.9,
        nesterovs_momentum: bool = True,
        early_stopping: bool = False,
        validation_fraction: float = 0.1,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-8,
        n_iter_no_change: int = 10,
        backend: str | None = None,
    ) -> None:
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.backend = backend

    # -- the subclasses' part ---------------------------------------------------------------
    def _loss(self) -> tn.Loss:
        raise NotImplementedError

    def _targets(self, y: np.ndarray, first: bool, classes: Any = None) -> np.ndarray:
        """y as the network's targets (labels or (n, outputs) values); sets what fit learns
        from y (classes_, n_outputs_) when ``first``."""
        raise NotImplementedError

    # -- parameters -----------------------------------------------------------------------------
    def _hidden_sizes(self) -> list[int]:
        sizes = self.hidden_layer_sizes
        sizes = [sizes] if isinstance(sizes, Integral) else list(sizes)
        if not all(isinstance(s, Integral) and not isinstance(s, bool) and s > 0 for s in sizes):
            raise ValueError(
                f"hidden_layer_sizes must be positive integers, got {self.hidden_layer_sizes!r}"
            )
        return [int(s) for s in sizes]

    def _check_parameters(self) -> None:
        """ValueError naming the parameter, for every setting out of its domain."""
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}"
            )
        if self.solver not in ("adam", "sgd"):
            raise ValueError(
                f"solver must be 'adam' or 'sgd' (tinynet has no 'lbfgs'), got {self.solver!r}"
            )
        # each number within scikit-learn's range for it (InvalidInputError is a ValueError)
        checked_number("alpha", self.alpha, 0.0)
        checked_number("learning_rate_init", self.learning_rate_init, 0.0, low_open=True)
        checked_number("tol", self.tol, 0.0)
        checked_number("momentum", self.momentum, 0.0, 1.0, high_open=False)
        checked_number("validation_fraction", self.validation_fraction, 0.0, 1.0, low_open=True)
        checked_number("beta_1", self.beta_1, 0.0, 1.0)
        checked_number("beta_2", self.beta_2, 0.0, 1.0)
        checked_number("epsilon", self.epsilon, 0.0, low_open=True)
        for name in ("max_iter", "n_iter_no_change"):
            positive_int(name, getattr(self, name))
        batch = self.batch_size
        if batch != "auto" and (
            not isinstance(batch, Integral) or isinstance(batch, bool) or batch < 1
        ):
            raise ValueError(f"batch_size must be 'auto' or a positive integer, got {batch!r}")

    def _batch(self, n_samples: int) -> int:
        if self.batch_size == "auto":
            return min(200, n_samples)
        if self.batch_size > n_samples:
            warnings.warn(
                f"Got batch_size={self.batch_size} larger than the {n_samples} samples: "
                "it is clipped to the sample count",
                UserWarning,
                stacklevel=3,
            )
        return min(int(self.batch_size), n_samples)

    def _optimizer(self, batch: int) -> tn.Optimizer:
        decay = self.alpha / batch  # scikit-learn's L2 gradient per batch: alpha W / batch
        if self.solver == "adam":
            betas = (self.beta_1, self.beta_2)
            return tn.Adam(self.learning_rate_init, betas, self.epsilon, weight_decay=decay)
        nesterov = bool(self.nesterovs_momentum) and self.momentum > 0
        return tn.SGD(self.learning_rate_init, self.momentum, nesterov, weight_decay=decay)

    # -- training -------------------------------------------------------------------------------
    def fit(self, X: Any, y: Any) -> _BaseMLP:
        """Train on (X, y) for up to max_iter epochs; with warm_start, from the last fit."""
        return self._fit(X, y, incremental=False)

    def _fit(self, X: Any, y: Any, incremental: bool, classes: Any = None) -> _BaseMLP:
        self._check_parameters()
        warm = (incremental or self.warm_start) and hasattr(self, "_net")
        X, y = validate_data(
            self,
            X,
            y,
            reset=not warm,
            dtype=(np.float64, np.float32),
            multi_output=True,
            y_numeric=not isinstance(self, ClassifierMixin),
        )
        targets = self._targets(y, first=not warm, classes=classes)
        rng = check_random_state(self.random_state)
        if not warm:
            sizes = [X.shape[1], *self._hidden_sizes(), self.n_outputs_]
            with tn.use_backend(self.backend) if self.backend else contextlib.nullcontext():
                self._net = tn.MLP.from_sizes(
                    sizes,
                    ACTIVATIONS[self.activation],
                    self._output_activation,
                    dtype=X.dtype,
                    seed=int(rng.randint(SEED_BOUND)),
                )
            self._optim = None
            self.n_iter_, self.t_, self.loss_curve_ = 0, 0, []
            self.best_loss_ = None if self.early_stopping else math.inf
            self.validation_scores_ = [] if self.early_stopping else None
            self.best_validation_score_ = -math.inf if self.early_stopping else None
        batch = self._batch(X.shape[0])
        if self._optim is None:
            self._optim = self._optimizer(batch)
        epochs = 1 if incremental else self.max_iter
        # scikit-learn stops once n_iter_no_change epochs in a row did not improve by tol, on
        # the epoch after them: EarlyStopping's patience counts that epoch too
        patience, stop = self.n_iter_no_change + 1, None
        if self.early_stopping and not incremental:
            monitor = "val_accuracy" if isinstance(self, ClassifierMixin) else "val_loss"
            stop = tn.EarlyStopping(monitor, patience, self.tol, restore_best=True)
        elif not incremental:
            stop = tn.EarlyStopping("loss", patience, self.tol, restore_best=False)
        history = self._net.fit(
            X,
            targets,
            self._loss(),
            self._optim,
            epochs=epochs,
            batch_size=batch,
            shuffle=bool(self.shuffle),
            seed=int(rng.randint(SEED_BOUND)),
            progress=bool(self.verbose),
            validation_split=self.validation_fraction if stop and self.early_stopping else 0.0,
            early_stopping=stop,
        )
        done = len(history["loss"])
        self.n_iter_ += done
        self.t_ += done * X.shape[0]
        self.loss_curve_ += [float(v) for v in history["loss"]]
        self.loss_ = self.loss_curve_[-1]
        if self.early_stopping and "val_loss" in history.history:
            scores = self._validation_scores(history)
            self.validation_scores_ += scores
            self.best_validation_score_ = max(self.validation_scores_)
        elif not self.early_stopping:
            self.best_loss_ = min(self.best_loss_, *self.loss_curve_[-done:])
        if not incremental and done == epochs:
            warnings.warn(
                f"tinynet {type(self).__name__}: max_iter={self.max_iter} epochs reached and "
                "the optimization hasn't converged yet",
                ConvergenceWarning,
                stacklevel=2,
            )
        return self

    def _validation_scores(self, history: tn.History) -> list[float]:
        return [-float(v) for v in history["val_loss"]]

    def _outputs(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "_net")
        X = validate_data(self, X, reset=False, dtype=(np.float64, np.float32))
        return self._net.predict(X.astype(self._net.dtype, copy=False))

    # -- scikit-learn's view of the weights ------------------------------------------------
    @property
    def coefs_(self) -> list[np.ndarray]:
        """Per layer the weight matrix (n_in, n_out), as scikit-learn's (tinynet's transposed)."""
        check_is_fitted(self, "_net")
        return [W.T.copy() for W, _ in self._net.get_weights()]

    @property
    def intercepts_(self) -> list[np.ndarray]:
        check_is_fitted(self, "_net")
        return [b.copy() for _, b in self._net.get_weights()]

    @property
    def n_layers_(self) -> int:
        check_is_fitted(self, "_net")
        return len(self._net.get_weights()) + 1

    # -- pickling: the weights as NumPy arrays, the network rebuilt on load ---------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        net = state.pop("_net", None)
        state.pop("_optim", None)
        if net is not None:
            state["_weights"] = net.get_weights()
            state["_dtype"] = str(net.dtype)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        weights = state.pop("_weights", None)
        dtype = state.pop("_dtype", None)
        self.__dict__.update(state)
        if weights is None:
            return
        sizes = [weights[0][0].shape[1]] + [W.shape[0] for W, _ in weights]
        with tn.use_backend(self.backend) if self.backend else contextlib.nullcontext():
            net = tn.MLP.from_sizes(
                sizes, ACTIVATIONS[self.activation], self._output_activation, dtype=dtype
            )
        for layer, (W, b) in zip(net.layers, weights, strict=True):
            layer.set_weights(W, b)
        self._net, self._optim = net, None


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """A multi-layer perceptron classifier: softmax outputs, cross-entropy loss.

    ``MLPClassifier(hidden_layer_sizes=(100,), activation="relu", solver="adam", ...)`` as
    scikit-learn's; ``backend`` picks the tinynet backend. ``predict_proba`` (n, n_classes).
    """

    _output_activation = "softmax"

    def _loss(self) -> tn.Loss:
        return tn.CrossEntropy()

    def _targets(self, y: np.ndarray, first: bool, classes: Any = None) -> np.ndarray:
        check_classification_targets(y)
        if y.ndim != 1 and not (y.ndim == 2 and y.shape[1] == 1):
            raise ValueError("tinynet's MLPClassifier takes one label per sample (1-d y)")
        y = column_or_1d(y, warn=True)  # a column: DataConversionWarning, as scikit-learn's
        if first:
            known = np.unique(y) if classes is None else np.unique(np.asarray(classes))
            if len(known) < 2:
                raise ValueError(
                    f"the classifier needs samples of at least 2 classes; got 1 class: {known}"
                )
            self.classes_ = known
            self.n_outputs_ = len(known)
            self.out_activation_ = "softmax"
        unseen = ~np.isin(y, self.classes_)
        if unseen.any():
            raise ValueError(
                f"y has labels not in classes_ {self.classes_.tolist()}: "
                f"{np.unique(y[unseen]).tolist()}"
            )
        return np.searchsorted(self.classes_, y).astype(np.int64)

    def _validation_scores(self, history: tn.History) -> list[float]:
        return [float(v) for v in history["val_accuracy"]]

    def partial_fit(self, X: Any, y: Any, classes: Any = None) -> MLPClassifier:
        """One epoch over (X, y); the first call needs ``classes``, every label to come."""
        if not hasattr(self, "_net") and classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit")
        if classes is not None and hasattr(self, "classes_"):
            given = np.unique(np.asarray(classes))
            if not np.array_equal(given, self.classes_):  # scikit-learn's rule and message
                raise ValueError(
                    f"`classes={given!r}` is not the same as on last call to partial_fit, "
                    f"was: {self.classes_!r}"
                )
        return self._fit(X, y, incremental=True, classes=classes)

    def predict_proba(self, X: Any) -> np.ndarray:
        """The class probabilities, (n_samples, n_classes), in the order of classes_."""
        return self._outputs(X).astype(np.float64)

    def predict_log_proba(self, X: Any) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def predict(self, X: Any) -> np.ndarray:
        outputs = self._outputs(X)  # first: NotFittedError before a fit
        return self.classes_[np.argmax(outputs, axis=1)]

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = True
        return tags


class MLPRegressor(RegressorMixin, _BaseMLP):
    """A multi-layer perceptron regressor: identity outputs, squared error loss (1/2 the mean
    squared error, as scikit-learn's). y (n,) or (n, n_outputs)."""

    _output_activation = "identity"

    def _loss(self) -> tn.Loss:
        return tn.SquaredError(scale=0.5)

    def _targets(self, y: np.ndarray, first: bool, classes: Any = None) -> np.ndarray:
        targets = y.reshape(len(y), -1)
        if first:
            self._y_1d = y.ndim == 1
            self.n_outputs_ = targets.shape[1]
            self.out_activation_ = "identity"
        elif targets.shape[1] != self.n_outputs_:
            raise ValueError(f"y has {targets.shape[1]} outputs, the model {self.n_outputs_}")
        return targets

    def partial_fit(self, X: Any, y: Any) -> MLPRegressor:
        """One epoch over (X, y), from where the last call left off."""
        return self._fit(X, y, incremental=True)

    def predict(self, X: Any) -> np.ndarray:
        out = self._outputs(X).astype(np.float64)
        return out.ravel() if self._y_1d else out

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags


__all__ = ["MLPClassifier", "MLPRegressor"]
