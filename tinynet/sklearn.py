"""scikit-learn estimators trained by tinynet: ``MLPClassifier`` and ``MLPRegressor``.

Drop-in for ``sklearn.neural_network``'s estimators of the same names where the meaning is the
same (parameter names, attributes, the ``adam``/``sgd`` solvers), on any tinynet backend
(``backend="numba"``; None: tinynet's default). Needs ``pip install "tinynet-mlp[sklearn]"``;
``import tinynet`` does not import this module.

After each epoch they do what scikit-learn's stochastic solvers do (``_EpochRule``): the same
``n_iter_``, ``t_``, ``loss_curve_``, ``verbose`` lines, ``tol`` / ``n_iter_no_change`` rule
(``np.inf`` never stops), ``learning_rate`` ("constant", "invscaling" with ``power_t``,
"adaptive"), early stopping on a split made by scikit-learn's ``train_test_split`` (stratified
for a binary problem) scored by ``score``, and its errors.

What differs from scikit-learn's MLP (issue #25 tracks each):
- ``alpha`` (L2) becomes the optimizer's weight decay ``alpha / batch_size``, the gradient
  scikit-learn's penalty adds per batch, and applies to the biases too.
- ``loss_curve_`` holds the data loss without the penalty.
- No sparse input, ``sample_weight`` or ``loss="poisson"``; ``coefs_`` / ``intercepts_``
  are read-only (scikit-learn's own test_fit sets them, and its worked example needs the L2
  decay on the weights alone).

``solver="lbfgs"`` is scikit-learn's: SciPy's L-BFGS-B on the penalized loss over the whole
data set, its gradient from one forward and backward pass on the backend per evaluation.
- Pickles keep the weights, not the optimizer's moments: a ``warm_start`` fit after unpickling
  starts its optimizer afresh.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from numbers import Integral
from types import SimpleNamespace
from typing import Any

import numpy as np
import scipy.optimize

from tinynet.system import install_hint

try:
    import sklearn  # noqa: F401
except ImportError as exc:  # name the extra, as the onnx and torch integrations do
    raise ImportError(f"tinynet.sklearn needs scikit-learn: {install_hint('sklearn')}") from exc

from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import r2_score
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.optimize import _check_optimize_result
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

import tinynet as tn
from tinynet.errors import checked_number, positive_int

# scikit-learn's activation names, and tinynet's own
ACTIVATIONS = {"identity": "identity", "logistic": "sigmoid", "tanh": "tanh", "relu": "relu"}
ACTIVATIONS |= {name: name for name in ("sigmoid", "leaky_relu")}
SEED_BOUND = 2**31 - 1


NON_FINITE = (
    "Solver produced non-finite parameter weights. The input data may contain large values "
    "and need to be preprocessed."
)


class _EpochRule:
    """What scikit-learn's stochastic solvers do after each epoch, for tinynet's ``fit`` (which
    calls it as its early stopping): count the epoch (``n_iter_``, ``t_``, ``loss_curve_``),
    print it when verbose, count epochs without an improvement of ``tol`` (of the training loss,
    or of the validation score with early stopping, keeping the best weights), set the next
    epoch's learning rate (invscaling, adaptive) and say when to stop."""

    def __init__(
        self, estimator: _BaseMLP, validation: tuple | None, n_samples: int, incremental: bool
    ) -> None:
        self.estimator, self.validation = estimator, validation
        self.n_samples, self.incremental = n_samples, incremental
        self.stopped = False
        self.best_params: list[Any] | None = None

    def start(self) -> None:
        self.stopped, self.best_params = False, None

    def after_epoch(self, epoch: int, record: dict[str, float], params: list, xp: Any) -> bool:
        est = self.estimator
        est.n_iter_ += 1
        est.t_ += self.n_samples
        est.loss_ = float(record["loss"])
        est.loss_curve_.append(est.loss_)
        if est.verbose:
            print(f"Iteration {est.n_iter_}, loss = {est.loss_:.8f}")
        if self.validation is not None:
            score = est._score_on(*self.validation)
            est.validation_scores_.append(score)
            if est.verbose:
                print(f"Validation score: {score:f}")
            improved = score >= est.best_validation_score_ + est.tol
            if score > est.best_validation_score_:
                est.best_validation_score_ = score
                self.best_params = [xp.array(p.data, copy=True) for p in params]
        else:
            improved = est.loss_ <= est.best_loss_ - est.tol
            est.best_loss_ = min(est.best_loss_, est.loss_)
        est._no_improvement_count = 0 if improved else est._no_improvement_count + 1
        optimizer = est._optim
        if est.solver == "sgd" and est.learning_rate == "invscaling":
            optimizer.lr = est.learning_rate_init / (est.t_ + 1) ** est.power_t
        if est._no_improvement_count > est.n_iter_no_change:
            what = "Validation score" if self.validation is not None else "Training loss"
            message = (
                f"{what} did not improve more than tol={est.tol:f} for "
                f"{est.n_iter_no_change} consecutive epochs."
            )
            if est.solver == "sgd" and est.learning_rate == "adaptive" and optimizer.lr > 1e-6:
                optimizer.lr /= 5.0
                est._no_improvement_count = 0
                if est.verbose:
                    print(message + f" Setting learning rate to {optimizer.lr:f}")
            else:
                if est.verbose:
                    print(message + " Stopping.")
                self.stopped = True
                return True
        return False

    def restore(self, params: list) -> None:
        """With early stopping, the weights of the best validation score, as scikit-learn's."""
        if self.best_params is not None:
            for p, best in zip(params, self.best_params, strict=True):
                p.data[...] = best


def _stochastic(estimator: Any) -> bool:
    """partial_fit exists for the stochastic solvers only, as in scikit-learn."""
    if estimator.solver not in ("sgd", "adam"):
        raise AttributeError(f"partial_fit is only available for stochastic optimizers. "
                             f"{estimator.solver} is not stochastic.")  # fmt: skip
    return True


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
        n_iter_no_change: int | float = 10,
        learning_rate: str = "constant",
        power_t: float = 0.5,
        max_fun: int = 15000,
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
        self.learning_rate = learning_rate
        self.power_t = power_t
        self.max_fun = max_fun
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
        if self.solver not in ("adam", "sgd", "lbfgs"):
            raise ValueError(f"solver must be 'adam', 'sgd' or 'lbfgs', got {self.solver!r}")
        # each number within scikit-learn's range for it (InvalidInputError is a ValueError)
        checked_number("alpha", self.alpha, 0.0)
        checked_number("learning_rate_init", self.learning_rate_init, 0.0, low_open=True)
        checked_number("tol", self.tol, 0.0)
        checked_number("momentum", self.momentum, 0.0, 1.0, high_open=False)
        checked_number("validation_fraction", self.validation_fraction, 0.0, 1.0, low_open=True)
        checked_number("beta_1", self.beta_1, 0.0, 1.0)
        checked_number("beta_2", self.beta_2, 0.0, 1.0)
        checked_number("epsilon", self.epsilon, 0.0, low_open=True)
        positive_int("max_iter", self.max_iter)
        positive_int("max_fun", self.max_fun)
        if self.n_iter_no_change != math.inf:  # inf: never stop for want of improvement
            positive_int("n_iter_no_change", self.n_iter_no_change)
        if self.learning_rate not in ("constant", "invscaling", "adaptive"):
            raise ValueError(
                "learning_rate must be 'constant', 'invscaling' or 'adaptive', got "
                f"{self.learning_rate!r}"
            )
        checked_number("power_t", self.power_t, 0.0)
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

    def _new_optimizer(self, batch: int) -> tn.Optimizer:
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
        if incremental and self.early_stopping:
            raise ValueError("partial_fit does not support early_stopping=True")
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
        if warm and not incremental:
            self._check_warm_start(y)
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
            self.t_, self.loss_curve_, self._no_improvement_count = 0, [], 0
            self.best_loss_ = None if self.early_stopping else math.inf
            self.validation_scores_ = [] if self.early_stopping else None
            self.best_validation_score_ = -math.inf if self.early_stopping else None
        if self.solver == "lbfgs":
            self._fit_lbfgs(X, targets)
            return self
        validation = None
        if self.early_stopping:  # scikit-learn's split: stratified for a classifier
            X, X_val, targets, y_val = train_test_split(
                X,
                targets,
                random_state=rng,
                test_size=self.validation_fraction,
                stratify=self._stratify(targets),
            )
            if X_val.shape[0] < 2:
                raise ValueError(
                    "The validation set is too small. Increase 'validation_fraction' or the "
                    "size of your dataset."
                )
            validation = (X_val, y_val)
        batch = self._batch(X.shape[0])
        if self._optim is None:
            self._optim = self._new_optimizer(batch)
        self.n_iter_ = 0
        rule = _EpochRule(self, validation, X.shape[0], incremental)
        try:
            self._net.fit(
                X,
                targets,
                self._loss(),
                self._optim,
                epochs=1 if incremental else self.max_iter,
                batch_size=batch,
                shuffle=bool(self.shuffle),
                seed=int(rng.randint(SEED_BOUND)),
                early_stopping=rule,
            )
        except tn.InvalidInputError as exc:  # the loss turned NaN or inf: the epoch undone
            if "diverged" not in str(exc):
                raise
            if rule.best_params is None:
                raise ValueError(f"{NON_FINITE} ({exc})") from exc
            # as scikit-learn with early stopping: the diverged epoch scores NaN, and the model
            # keeps the weights of its best validation score
            self.n_iter_ += 1
            self.validation_scores_.append(math.nan)
            rule.restore(self._net.parameters())
        if not all(np.isfinite(w).all() for pair in self._net.get_weights() for w in pair):
            raise ValueError(NON_FINITE)
        if not incremental and self.n_iter_ == self.max_iter and not rule.stopped:
            warnings.warn(
                f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and the "
                "optimization hasn't converged yet.",
                ConvergenceWarning,
                stacklevel=2,
            )
        return self

    def _score_on(self, X: np.ndarray, targets: np.ndarray) -> float:
        """The validation score early stopping watches, as scikit-learn's ``score``."""
        raise NotImplementedError

    def _lbfgs_objective(self, X: np.ndarray, targets: np.ndarray) -> tuple[Any, np.ndarray, Any]:
        """(f, the parameters now, put): f(flat) is the loss over the whole data set plus the
        L2 penalty 0.5 alpha |W|^2 / n (weights only, as scikit-learn's) and its gradient, in
        float64, from one forward and backward pass on the backend; put(flat) sets the
        network's parameters."""
        net, loss, n = self._net, self._loss(), X.shape[0]
        B, params = net.backend, net.parameters()
        inputs, outputs = net.as_inputs(X), net.as_targets(targets, n)
        shapes = [tuple(p.data.shape) for p in params]
        sizes = [int(np.prod(shape)) for shape in shapes]
        # 1 where flat holds a weight (the penalty's), 0 where a bias
        penalized = np.concatenate(
            [np.full(k, float(len(shape) == 2)) for shape, k in zip(shapes, sizes, strict=True)]
        )

        def put(flat: np.ndarray) -> None:
            offset = 0
            for p, shape, size in zip(params, shapes, sizes, strict=True):
                part = flat[offset : offset + size].reshape(shape)
                p.data[...] = B.asarray(part.astype(p.data.dtype, copy=False))
                offset += size

        def loss_and_gradient(flat: np.ndarray) -> tuple[float, np.ndarray]:
            put(flat)
            value = float(net.gradients(inputs, outputs, loss))
            gradient = np.concatenate([B.to_numpy(p.grad).ravel() for p in params])
            gradient = gradient.astype(np.float64, copy=False)
            weights = flat * penalized  # the weights of flat itself: no copy from the network
            value += 0.5 * self.alpha * float(weights @ weights) / n
            return value, gradient + self.alpha * weights / n

        start = np.concatenate([B.to_numpy(p.data).astype(np.float64).ravel() for p in params])
        return loss_and_gradient, start, put

    def _fit_lbfgs(self, X: np.ndarray, targets: np.ndarray) -> None:
        """scikit-learn's lbfgs solver: SciPy's L-BFGS-B over every weight and bias at once
        (``_lbfgs_objective``); ``max_iter`` iterations, ``max_fun`` evaluations, ``tol`` the
        projected gradient's."""
        objective, start, put = self._lbfgs_objective(X, targets)
        result = scipy.optimize.minimize(
            objective,
            start,
            method="L-BFGS-B",
            jac=True,
            options={"maxfun": self.max_fun, "maxiter": self.max_iter, "gtol": self.tol},
        )
        self.n_iter_ = _check_optimize_result("lbfgs", result, self.max_iter)
        self.loss_ = float(result.fun)
        put(result.x)
        if not all(np.isfinite(w).all() for pair in self._net.get_weights() for w in pair):
            raise ValueError(NON_FINITE)

    def _stratify(self, targets: np.ndarray) -> np.ndarray | None:
        """What early stopping's split is stratified by: nothing (a classifier says)."""
        return None

    def _check_warm_start(self, y: np.ndarray) -> None:
        """What a warm_start fit's y must share with the last fit's (a classifier: classes)."""

    @property
    def _optimizer(self) -> Any:
        """scikit-learn's private ``_optimizer.learning_rate`` (the rate the next epoch uses),
        for code written against its estimators; None before a fit."""
        optim = getattr(self, "_optim", None)
        return None if optim is None else SimpleNamespace(learning_rate=optim.lr)

    def _outputs(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "_net")
        X = validate_data(self, X, reset=False, dtype=(np.float64, np.float32))
        # validate_data refused NaN and inf: the network need not scan X again
        return self._net.predict(X.astype(self._net.dtype, copy=False), check_finite=False)

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
    """A multi-layer perceptron classifier, with scikit-learn's output layers: softmax and
    cross-entropy for several classes; one logistic unit and binary cross-entropy for two
    (``coefs_[-1]`` is (hidden, 1)); a logistic unit per label for multilabel targets (y an
    (n, n_labels) indicator matrix).

    ``MLPClassifier(hidden_layer_sizes=(100,), activation="relu", solver="adam", ...)`` as
    scikit-learn's; ``backend`` picks the tinynet backend. ``predict_proba``: (n, n_classes),
    or (n, n_labels) for multilabel targets.
    """

    @property
    def _output_activation(self) -> str:
        return "softmax" if self.out_activation_ == "softmax" else "sigmoid"

    def _loss(self) -> tn.Loss:
        return tn.CrossEntropy() if self.out_activation_ == "softmax" else tn.BinaryCrossEntropy()

    def _targets(self, y: np.ndarray, first: bool, classes: Any = None) -> np.ndarray:
        """Class indices (softmax: several classes), or 0/1 columns (one for two classes, one
        per label for multilabel targets), as the network's targets."""
        check_classification_targets(y)
        if y.ndim == 2 and y.shape[1] > 1:  # a label indicator matrix: multilabel
            if first:
                self.classes_ = np.arange(y.shape[1])
                self.n_outputs_, self.out_activation_ = y.shape[1], "logistic"
                self._multilabel = True
            elif not getattr(self, "_multilabel", False) or y.shape[1] != self.n_outputs_:
                raise ValueError(f"y has {y.shape[1]} labels, the model {self.n_outputs_}")
            return np.asarray(y, np.float64)
        y = column_or_1d(y, warn=True)  # a column: DataConversionWarning, as scikit-learn's
        if first:
            known = np.unique(y) if classes is None else np.unique(np.asarray(classes))
            self.classes_ = known  # one class: it is always predicted, as scikit-learn's
            self._multilabel = False
            if len(known) == 2:
                self.n_outputs_, self.out_activation_ = 1, "logistic"
            else:
                self.n_outputs_, self.out_activation_ = len(known), "softmax"
        elif getattr(self, "_multilabel", False):
            raise ValueError("the model was fitted on multilabel targets: y must be one too")
        unseen = ~np.isin(y, self.classes_)
        if unseen.any():
            raise ValueError(
                f"y has labels not in classes_ {self.classes_.tolist()}: "
                f"{np.unique(y[unseen]).tolist()}"
            )
        index = np.searchsorted(self.classes_, y)
        if self.out_activation_ == "logistic":  # two classes: the second's probability
            return (index == 1).astype(np.float64).reshape(-1, 1)
        return index.astype(np.int64)

    def _check_warm_start(self, y: np.ndarray) -> None:
        if getattr(self, "_multilabel", False):
            return
        classes = np.unique(y)
        if not np.array_equal(classes, self.classes_):  # scikit-learn's rule and message
            raise ValueError(
                "warm_start can only be used where `y` has the same classes as in the previous "
                f"call to fit. Previously got {self.classes_}, `y` has {classes}"
            )

    def _stratify(self, targets: np.ndarray) -> np.ndarray | None:
        """scikit-learn stratifies a binary problem's split by its one label column (as bools:
        its error for a class too small names it 'True'); others not at all."""
        if self.out_activation_ == "logistic" and not self._multilabel:
            return (targets == 1).reshape(-1, 1)
        return None

    def _decide(self, outputs: np.ndarray) -> np.ndarray:
        """The network's outputs as targets are written: class indices (softmax), or 0/1
        columns (logistic units, at 0.5)."""
        if self.out_activation_ == "softmax":
            return np.argmax(outputs, axis=1)
        return (outputs > 0.5).astype(np.int64)

    def _score_on(self, X: np.ndarray, targets: np.ndarray) -> float:
        """Accuracy, as ClassifierMixin.score (multilabel: every label right); NaN where the
        outputs are not finite, as scikit-learn's."""
        outputs = self._net.predict(X)
        if not np.isfinite(outputs).all():
            return math.nan
        right = self._decide(outputs) == targets
        return float(np.mean(right if right.ndim == 1 else right.all(axis=1)))

    @available_if(_stochastic)
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
        """The class probabilities, (n_samples, n_classes), in the order of classes_; for
        multilabel targets each label's, (n_samples, n_labels)."""
        outputs = self._outputs(X).astype(np.float64)
        if self.out_activation_ == "logistic" and not self._multilabel:
            return np.hstack([1 - outputs, outputs])
        return outputs

    def predict_log_proba(self, X: Any) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def predict(self, X: Any) -> np.ndarray:
        """Labels, or for multilabel targets an (n_samples, n_labels) indicator matrix."""
        decided = self._decide(self._outputs(X))  # first: NotFittedError before a fit
        if self._multilabel:
            return decided
        return self.classes_[decided.ravel()]

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = True
        tags.classifier_tags.multi_label = True
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

    def _score_on(self, X: np.ndarray, targets: np.ndarray) -> float:
        """R², as RegressorMixin.score (over the outputs, uniformly); NaN where the outputs are
        not finite, as scikit-learn's."""
        outputs = self._net.predict(X)
        if not np.isfinite(outputs).all():
            return math.nan
        return float(r2_score(targets, outputs))

    @available_if(_stochastic)
    def partial_fit(self, X: Any, y: Any) -> MLPRegressor:
        """One epoch over (X, y), from where the last call left off."""
        return self._fit(X, y, incremental=True)

    def predict(self, X: Any) -> np.ndarray:
        out = self._outputs(X)  # in the parameters' dtype, as scikit-learn's
        return out.ravel() if self._y_1d else out

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags


__all__ = ["MLPClassifier", "MLPRegressor"]
