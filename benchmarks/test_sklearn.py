"""tinynet's scikit-learn estimators against scikit-learn's own MLP: the same architecture
(scikit-learn's default, one hidden layer of 100 ReLU units), solver (Adam), batch size (200),
number of epochs and data; seconds per epoch and the test score of each.

Each round fits a fresh estimator for a fixed number of epochs (no early stop), after a pause
that lets the previous contender's BLAS threads stop spinning; contenders alternate, and the
tinynet backends are warmed up first so compilation is not timed.
"""

from __future__ import annotations

import time
import warnings
from functools import cache

import numpy as np
import pytest

import tinynet as tn
from benchmarks.conftest import tinynet_backends

pytest.importorskip("sklearn")

REPEATS = 2
SETTLE_S = 1.0
# dataset: epochs per fit
EPOCHS = {"MNIST": 5, "digits": 50, "classification 100k": 5, "regression 50k": 5}
CONTENDERS = ["sklearn"] + [f"tinynet-{name}" for name in tinynet_backends() if name != "cupy"]


@cache
def _dataset(name: str):
    """(X_train, X_test, y_train, y_test, is_classification), float32 features."""
    from sklearn.datasets import load_digits, make_classification, make_regression
    from sklearn.model_selection import train_test_split

    if name == "MNIST":
        try:
            (x, y), (xt, yt) = (
                tn.datasets.mnist("train", download=False),
                tn.datasets.mnist("test", download=False),
            )
        except tn.DataFileError:
            pytest.skip("full MNIST not found (TINYNET_DATA_DIR)")
        return (
            (x / np.float32(255)).astype(np.float32),
            (xt / np.float32(255)).astype(np.float32),
            y,
            yt,
            True,
        )
    if name == "digits":
        X, y = load_digits(return_X_y=True)
        X, classify = X / 16.0, True
    elif name == "classification 100k":
        X, y = make_classification(
            n_samples=100_000, n_features=40, n_informative=20, n_classes=5, random_state=0
        )
        classify = True
    else:
        X, y = make_regression(
            n_samples=50_000, n_features=50, n_informative=30, noise=10.0, random_state=0
        )
        y, classify = (y - y.mean()) / y.std(), False
    X_train, X_test, y_train, y_test = train_test_split(
        X.astype(np.float32), y, test_size=0.2, random_state=0
    )
    return X_train, X_test, y_train, y_test, classify


def _estimator(contender: str, classify: bool, epochs: int):
    settings = dict(max_iter=epochs, n_iter_no_change=epochs + 1, tol=0.0, random_state=0)
    if contender == "sklearn":
        from sklearn.neural_network import MLPClassifier, MLPRegressor
    else:
        from tinynet.sklearn import MLPClassifier, MLPRegressor

        settings["backend"] = contender.removeprefix("tinynet-")
    return (MLPClassifier if classify else MLPRegressor)(**settings)


@pytest.mark.parametrize("contender", CONTENDERS)
@pytest.mark.parametrize("repeat", range(REPEATS), ids=lambda r: f"r{r}")
@pytest.mark.parametrize("dataset", EPOCHS)
def test_against_scikit_learn(benchmark, dataset, repeat, contender):
    X_train, X_test, y_train, y_test, classify = _dataset(dataset)
    epochs = EPOCHS[dataset]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: a fixed number of epochs
        if contender != "sklearn":  # compile outside the timing
            _estimator(contender, classify, 1).fit(X_train[:400], y_train[:400])
        model = _estimator(contender, classify, epochs)
        # the previous contender's BLAS pool (scikit-learn runs on NumPy's OpenBLAS, tinynet's
        # numba backend on SciPy's) spins for a while after its last call and would take half
        # of this one's cores: let it go to sleep first
        time.sleep(SETTLE_S)
        start = time.perf_counter()
        benchmark.pedantic(model.fit, args=(X_train, y_train), rounds=1, iterations=1)
        seconds = time.perf_counter() - start
    score = model.score(X_test, y_test)
    benchmark.group = f"sklearn {dataset}"
    benchmark.extra_info.update(
        kind="sklearn",
        contender=contender,
        dataset=dataset,
        repeat=repeat,
        epochs=model.n_iter_,
        s_per_epoch=seconds / model.n_iter_,
        score=score,
        metric="accuracy" if classify else "R^2",
        train_samples=len(X_train),
    )
    assert model.n_iter_ == epochs
    assert score > (0.5 if classify else 0.3), f"{contender} did not learn {dataset}: {score}"


# (dataset, training rows): L-BFGS iterations per fit
LBFGS_ITERATIONS = {("digits", 1437): 40, ("MNIST", 10_000): 15}


def _counted(objective, calls):
    def wrapped(*args, **kwargs):
        calls[0] += 1
        return objective(*args, **kwargs)

    return wrapped


@pytest.mark.parametrize("contender", CONTENDERS)
@pytest.mark.parametrize("repeat", range(REPEATS), ids=lambda r: f"r{r}")
@pytest.mark.parametrize("dataset", list(LBFGS_ITERATIONS), ids=lambda d: d[0])
def test_lbfgs_evaluation_against_scikit_learn(benchmark, dataset, repeat, contender):
    """solver="lbfgs" for a fixed number of iterations: the seconds per evaluation of the loss
    and its gradient over the whole training set (the fit's time over its evaluations,
    counted), and the final loss of each."""
    name, rows = dataset
    X_train, _, y_train, _, _ = _dataset(name)
    X_train, y_train = X_train[:rows], y_train[:rows]
    iterations = LBFGS_ITERATIONS[dataset]
    settings = dict(solver="lbfgs", max_iter=iterations, tol=0.0, random_state=0)
    calls = [0]
    if contender == "sklearn":
        from sklearn.neural_network import MLPClassifier

        model = MLPClassifier(**settings)
        model._loss_grad_lbfgs = _counted(model._loss_grad_lbfgs, calls)
    else:
        from tinynet.sklearn import MLPClassifier

        backend = contender.removeprefix("tinynet-")
        with warnings.catch_warnings():  # compile outside the timing
            warnings.simplefilter("ignore")
            MLPClassifier(**{**settings, "max_iter": 2}, backend=backend).fit(
                X_train[:400], y_train[:400]
            )
        model = MLPClassifier(**settings, backend=backend)
        objective = model._lbfgs_objective
        model._lbfgs_objective = lambda *a: (_counted(objective(*a)[0], calls), *objective(*a)[1:])
    time.sleep(SETTLE_S)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: a fixed number of iterations
        start = time.perf_counter()
        benchmark.pedantic(model.fit, args=(X_train, y_train), rounds=1, iterations=1)
        seconds = time.perf_counter() - start
    benchmark.group = f"sklearn lbfgs {name}"
    benchmark.extra_info.update(
        kind="sklearn-op",
        op="lbfgs: loss and gradient",
        contender=contender,
        dataset=f"{name} ({rows:,} rows)",
        repeat=repeat,
        seconds=seconds / calls[0],
        evaluations=calls[0],
        loss=float(model.loss_),
    )
    assert calls[0] >= iterations


@pytest.mark.parametrize("contender", CONTENDERS)
@pytest.mark.parametrize("repeat", range(REPEATS), ids=lambda r: f"r{r}")
def test_predict_proba_against_scikit_learn(benchmark, repeat, contender):
    """predict_proba on the 10,000 MNIST test images, of a model fitted for one epoch (the
    median of 5 calls)."""
    X_train, X_test, y_train, _, _ = _dataset("MNIST")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = _estimator(contender, True, 1).fit(X_train, y_train)
        model.predict_proba(X_test[:100])  # compiled, buffers made
    time.sleep(SETTLE_S)
    benchmark.pedantic(model.predict_proba, args=(X_test,), rounds=5, iterations=1)
    benchmark.group = "sklearn predict_proba MNIST"
    benchmark.extra_info.update(
        kind="sklearn-op",
        op="predict_proba",
        contender=contender,
        dataset=f"MNIST test ({len(X_test):,} rows)",
        repeat=repeat,
        seconds=benchmark.stats.stats.median,
        loss=None,
    )
