"""tinynet.sklearn's estimators: scikit-learn's own estimator checks in full on the numpy and
numba backends, and what users do with them (pipelines, searches, pickles, partial_fit)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn.base import clone
from sklearn.datasets import load_digits, make_regression
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV, cross_val_score, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

import tinynet as tn
from tinynet import backend as backend_module
from tinynet.sklearn import MLPClassifier, MLPRegressor

# the backends scikit-learn's checks run on: numpy, and numba where it can run
BACKENDS = [n for n in ("numpy", "numba") if backend_module.backend_status()[n] is None]


@parametrize_with_checks(
    [est(backend=backend) for backend in BACKENDS for est in (MLPClassifier, MLPRegressor)]
)
def test_scikit_learn_estimator_checks(estimator, check):
    """Every check scikit-learn runs on an estimator, none skipped or expected to fail."""
    check(estimator)


def _digits():
    X, y = load_digits(return_X_y=True)
    return train_test_split(X / 16.0, y, test_size=0.3, random_state=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("solver", ["adam", "sgd"])
def test_the_classifier_learns_digits_as_well_as_scikit_learns(backend, solver):
    """Same architecture, solver and epochs as scikit-learn's MLPClassifier: test accuracy
    within 2 points of it (scikit-learn's own score is the independent reference)."""
    from sklearn.neural_network import MLPClassifier as SkMLPClassifier

    X_train, X_test, y_train, y_test = _digits()
    settings = dict(hidden_layer_sizes=(64,), solver=solver, max_iter=60, random_state=0)
    if solver == "sgd":
        settings["learning_rate_init"] = 0.05
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours = MLPClassifier(backend=backend, **settings).fit(X_train, y_train)
        theirs = SkMLPClassifier(**settings).fit(X_train, y_train)
    assert ours.score(X_test, y_test) >= theirs.score(X_test, y_test) - 0.02
    assert ours.score(X_test, y_test) > 0.9
    assert ours.n_iter_ == len(ours.loss_curve_) <= 60
    assert ours.loss_curve_[-1] < ours.loss_curve_[0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_regressor_fits_a_linear_target(backend):
    X, y = make_regression(n_samples=400, n_features=5, noise=0.1, random_state=0)
    y = (y - y.mean()) / y.std()
    model = MLPRegressor((32,), max_iter=300, random_state=0, backend=backend)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X, y)
    assert model.score(X, y) > 0.95  # scikit-learn's MLPRegressor: 0.989 here
    assert model.predict(X).shape == (400,)


def test_predict_proba_is_the_networks_softmax():
    """predict_proba from the weights by hand (float64 NumPy), not from the model's forward."""
    X_train, X_test, y_train, _ = _digits()
    model = MLPClassifier((16,), max_iter=5, random_state=0, backend=BACKENDS[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X_train, y_train)
    W1, W2 = model.coefs_
    b1, b2 = model.intercepts_
    hidden = np.maximum(X_test @ W1 + b1, 0)
    z = hidden @ W2 + b2
    expected = np.exp(z - z.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(model.predict_proba(X_test), expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(model.predict(X_test), model.classes_[expected.argmax(1)])


def test_string_labels_and_partial_fit():
    """partial_fit in chunks with string labels: the same network as with the integer labels
    they name (classes_ sorted alike), so each label maps to its output unit."""
    X_train, _, y_train, _ = _digits()
    names = np.array([f"digit {k}" for k in range(10)])
    models = {}
    for kind, labels, classes in (("names", names[y_train], names), ("ints", y_train, range(10))):
        model = MLPClassifier((32,), random_state=0, backend=BACKENDS[0])
        if kind == "names":
            with pytest.raises(ValueError, match="classes must be passed"):
                model.partial_fit(X_train[:50], labels[:50])
        chunks = range(0, len(X_train), 300)
        for _ in range(10):  # ten passes over the data in chunks, one epoch per call
            for start in chunks:
                model.partial_fit(
                    X_train[start : start + 300], labels[start : start + 300], classes
                )
        # scikit-learn's n_iter_ counts the last call's epochs; loss_curve_ every epoch
        assert model.n_iter_ == 1
        assert len(model.loss_curve_) == 10 * len(chunks)
        models[kind] = model
    np.testing.assert_array_equal(models["names"].classes_, names)
    predicted = models["names"].predict(X_train)
    np.testing.assert_array_equal(predicted, names[models["ints"].predict(X_train)])
    assert (predicted == names[y_train]).mean() > 0.7
    with pytest.raises(ValueError, match="labels not in classes_"):
        models["names"].partial_fit(X_train[:5], np.array(["digit 10"] * 5))


def test_partial_fit_refuses_classes_that_changed():
    """N20: scikit-learn raises when a later partial_fit names other classes."""
    X, y = np.eye(4), np.array([0, 1, 2, 0])
    model = MLPClassifier((4,), random_state=0, backend=BACKENDS[0])
    model.partial_fit(X, y, classes=[0, 1, 2])
    model.partial_fit(X, y, classes=[2, 1, 0])  # the same classes in another order
    with pytest.raises(ValueError, match="is not the same as on last call to partial_fit"):
        model.partial_fit(X, y, classes=[0, 1, 2, 3])


@pytest.mark.parametrize("nesterov", [True, False])
def test_sgd_with_momentum_trains_as_scikit_learns(nesterov):
    """From the same weights, on the same batches, in float64: the weights after 6 epochs are
    scikit-learn's, with and without nesterovs_momentum (its update, v <- m v - lr g, then
    w <- w + v or, Nesterov, w <- w + m v - lr g, is torch's in other variables)."""
    from sklearn.neural_network import MLPClassifier as ScikitLearnMLP

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(60, 4)), rng.integers(0, 3, 60)
    settings = dict(
        hidden_layer_sizes=(5,), activation="tanh", solver="sgd", learning_rate_init=0.1,
        momentum=0.9, nesterovs_momentum=nesterov, alpha=0.0, batch_size=20, shuffle=False,
        random_state=0, tol=0.0,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours = MLPClassifier(**settings, max_iter=6, backend=BACKENDS[0]).fit(X, y)
        # our initial weights: one epoch at a learning rate too small to move them
        start = MLPClassifier(**{**settings, "learning_rate_init": 1e-300}, max_iter=1).fit(X, y)
        theirs = ScikitLearnMLP(**settings, max_iter=1, warm_start=True).fit(X, y)
        theirs.coefs_ = [c.copy() for c in start.coefs_]
        theirs.intercepts_ = [b.copy() for b in start.intercepts_]
        theirs.set_params(max_iter=6).fit(X, y)
    mine, scikit = ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_
    for got, want in zip(mine, scikit, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_warm_start_continues_from_the_last_fit():
    """Each warm fit runs max_iter epochs from where the last left off; n_iter_ counts the last
    fit's, loss_curve_ all of them, as scikit-learn's own estimator does on the same data."""
    from sklearn.neural_network import MLPClassifier as TheirMLPClassifier

    X_train, _, y_train, _ = _digits()
    model = MLPClassifier((16,), max_iter=3, warm_start=True, random_state=0, backend="numpy")
    theirs = TheirMLPClassifier((16,), max_iter=3, warm_start=True, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X_train, y_train)
        first = model.coefs_[0].copy()
        model.fit(X_train, y_train)
        theirs.fit(X_train, y_train).fit(X_train, y_train)
    assert model.n_iter_ == theirs.n_iter_ == 3
    assert len(model.loss_curve_) == len(theirs.loss_curve_) == 6
    assert not np.array_equal(model.coefs_[0], first)  # went on training
    assert model.loss_curve_[3] < model.loss_curve_[0]  # from where it was, not from scratch


def test_early_stopping_holds_out_validation_data_and_stops():
    X_train, _, y_train, _ = _digits()
    model = MLPClassifier(
        (32,), early_stopping=True, n_iter_no_change=3, max_iter=500, random_state=0,
        backend=BACKENDS[0],
    )  # fmt: skip
    model.fit(X_train, y_train)
    assert model.n_iter_ < 500
    assert len(model.validation_scores_) == model.n_iter_
    assert model.best_validation_score_ == max(model.validation_scores_) > 0.8
    assert model.best_loss_ is None


def test_max_iter_without_convergence_warns():
    X_train, _, y_train, _ = _digits()
    with pytest.warns(ConvergenceWarning, match=r"Maximum iterations \(2\) reached"):
        MLPClassifier((8,), max_iter=2, random_state=0, backend="numpy").fit(X_train, y_train)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (dict(solver="newton"), "solver"),
        (dict(activation="softplus"), "activation"),
        (dict(hidden_layer_sizes=(10, 0)), "hidden_layer_sizes"),
        (dict(learning_rate_init=0.0), "learning_rate_init"),
        (dict(batch_size=0), "batch_size"),
        (dict(max_iter=0), "max_iter"),
        (dict(beta_2=1.5), "beta_2"),
        (dict(validation_fraction=1.0), "validation_fraction"),
        (dict(learning_rate="sometimes"), "learning_rate"),
        (dict(power_t=-0.5), "power_t"),
        (dict(max_fun=0), "max_fun"),
        (dict(n_iter_no_change=0), "n_iter_no_change"),
        (dict(n_iter_no_change=-np.inf), "n_iter_no_change"),
    ],
)
def test_bad_parameters_are_value_errors_naming_them(settings, message):
    X_train, _, y_train, _ = _digits()
    with pytest.raises(ValueError, match=message):
        MLPClassifier(backend="numpy", **settings).fit(X_train[:20], y_train[:20])


def test_pipeline_grid_search_and_cross_validation():
    X_train, X_test, y_train, y_test = _digits()
    pipe = make_pipeline(StandardScaler(), MLPClassifier(max_iter=20, random_state=0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        search = GridSearchCV(
            pipe, {"mlpclassifier__hidden_layer_sizes": [(16,), (64,)]}, cv=2, n_jobs=2
        ).fit(X_train, y_train)
        scores = cross_val_score(clone(pipe), X_train, y_train, cv=3)
    assert search.best_params_["mlpclassifier__hidden_layer_sizes"] in [(16,), (64,)]
    assert search.score(X_test, y_test) > 0.9
    assert scores.shape == (3,) and scores.min() > 0.85


def test_a_fitted_numba_estimator_unpickles_in_a_fresh_process(tmp_path):
    X_train, X_test, y_train, _ = _digits()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = MLPClassifier((16,), max_iter=5, random_state=0, backend="numba")
        model.fit(X_train, y_train)
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(model))
    np.save(tmp_path / "x.npy", X_test)
    x_path, p_path = str(tmp_path / "x.npy"), str(tmp_path / "p.npy")
    code = (
        "import pickle, sys, numpy as np\n"
        f"model = pickle.loads(open({str(path)!r}, 'rb').read())\n"
        f"np.save({p_path!r}, model.predict_proba(np.load({x_path!r})))\n"
        "print(type(model).__module__, 'sklearn' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
        env={**os.environ, "TINYNET_BACKEND": "numpy"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["tinynet.sklearn", "True"]
    np.testing.assert_array_equal(np.load(tmp_path / "p.npy"), model.predict_proba(X_test))


def test_import_tinynet_imports_no_ecosystem_package():
    code = (
        "import sys, tinynet\n"
        "extras = ('sklearn', 'onnx', 'onnxruntime', 'torch', 'mpi4py')\n"
        "print(sorted(m for m in extras if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_backend_parameter_picks_the_backend():
    X_train, _, y_train, _ = _digits()
    for backend in BACKENDS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model = MLPClassifier((8,), max_iter=1, backend=backend).fit(X_train, y_train)
        assert model._net.backend.name == backend
    assert tn.get_backend().name in tn.available_backends()


def _threads_here() -> tuple[int, int]:
    """(the numba backend's team for a per-sample epoch, BLAS threads) in this process."""
    import threadpoolctl

    with tn.use_backend(BACKENDS[-1]) as B:
        net = tn.MLP.from_sizes([8, 4, 2], dtype="float64")
        spec = net.epoch_spec(tn.CrossEntropy(), tn.SGD(0.1))
        team = B.team_size(spec, 1) if hasattr(B, "team_size") else 1
    blas = max(info["num_threads"] for info in threadpoolctl.threadpool_info())
    return team, blas


def test_joblib_workers_take_a_fair_share_of_the_cores():
    """GridSearchCV(n_jobs=2) runs in joblib's process workers: each worker's tinynet (its
    thread team and BLAS) must use cores / 2 threads, not every core."""
    from joblib import Parallel, delayed

    from tinynet.system import cpu_count

    shares = Parallel(n_jobs=2)(delayed(_threads_here)() for _ in range(2))
    fair = max(1, cpu_count() // 2)
    assert all(team <= fair and blas <= fair for team, blas in shares), shares


def test_a_grid_search_runs_on_dask_unchanged():
    """The same search through joblib's Dask backend on a LocalCluster of 2 processes: the same
    best parameters and scores as in this process."""
    distributed = pytest.importorskip("distributed")
    from joblib import parallel_config

    X_train, _, y_train, _ = _digits()
    X_train, y_train = X_train[:600], y_train[:600]
    grid = {"hidden_layer_sizes": [(8,), (32,)], "alpha": [1e-4, 1e-1]}
    model = MLPClassifier(max_iter=15, random_state=0, backend="numpy")
    environ = dict(os.environ)  # distributed leaves OPENBLAS_NUM_THREADS=1 etc. in it
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            here = GridSearchCV(model, grid, cv=2).fit(X_train, y_train)
            with (
                distributed.LocalCluster(n_workers=2, threads_per_worker=1) as cluster,
                distributed.Client(cluster) as client,
                parallel_config(backend="dask"),
                distributed.get_task_stream(client) as tasks,
            ):
                on_dask = GridSearchCV(model, grid, cv=2).fit(X_train, y_train)
    finally:  # later tests start child processes with this environment
        os.environ.clear()
        os.environ.update(environ)
    assert len({task["worker"] for task in tasks.data}) == 2  # the fits ran on both workers
    assert on_dask.best_params_ == here.best_params_
    np.testing.assert_allclose(
        on_dask.cv_results_["mean_test_score"], here.cv_results_["mean_test_score"], atol=1e-12
    )


@pytest.mark.parametrize("early_stopping", [False, True])
def test_training_stops_after_as_many_epochs_as_scikit_learns(early_stopping):
    """With a tol no epoch can beat, scikit-learn's own MLPClassifier is the reference for how
    many epochs n_iter_no_change allows."""
    from sklearn.neural_network import MLPClassifier as SkMLPClassifier

    X_train, _, y_train, _ = _digits()
    settings = dict(tol=1e9, n_iter_no_change=3, max_iter=50, early_stopping=early_stopping)
    theirs = SkMLPClassifier((8,), random_state=0, **settings).fit(X_train, y_train)
    ours = MLPClassifier((8,), random_state=0, backend="numpy", **settings).fit(X_train, y_train)
    assert ours.n_iter_ == theirs.n_iter_ < 50


def test_a_batch_larger_than_the_data_is_clipped_with_a_warning():
    X_train, _, y_train, _ = _digits()
    model = MLPClassifier((8,), batch_size=5000, max_iter=1, backend="numpy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        with pytest.warns(UserWarning, match="batch_size=5000 larger than the 1257 samples"):
            model.fit(X_train, y_train)
    assert model.t_ == len(X_train)


def test_binary_and_multilabel_targets_take_scikit_learns_output_layers():
    """Two classes: one logistic unit (coefs_[-1] is (hidden, 1)), predict_proba's columns
    1 - p and p; multilabel indicator targets: a logistic unit per label, an indicator matrix
    out. The shapes and kinds of scikit-learn's own estimator on the same data."""
    from sklearn.neural_network import MLPClassifier as TheirMLPClassifier

    X_train, _, y_train, _ = _digits()
    binary = np.where(y_train < 5, "low", "high")
    labels = np.c_[y_train % 2, y_train < 5, y_train == 0].astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for y in (binary, labels):
            ours = MLPClassifier((16,), max_iter=30, random_state=0, backend="numpy").fit(
                X_train, y
            )
            theirs = TheirMLPClassifier((16,), max_iter=30, random_state=0).fit(X_train, y)
            assert ours.out_activation_ == theirs.out_activation_ == "logistic"
            assert [c.shape for c in ours.coefs_] == [c.shape for c in theirs.coefs_]
            for method in ("predict", "predict_proba"):
                got, want = getattr(ours, method)(X_train), getattr(theirs, method)(X_train)
                assert got.shape == want.shape and got.dtype.kind == want.dtype.kind, method
            # learns as theirs does (the same rule, other initial weights and rounding)
            assert ours.score(X_train, y) > theirs.score(X_train, y) - 0.05
    proba = ours.predict_proba(X_train)  # multilabel: each label's own probability
    assert ((proba > 0) & (proba < 1)).all() and not np.allclose(proba.sum(axis=1), 1)


def test_regressor_outputs_are_checked():
    X_train, _, y_train, _ = _digits()
    model = MLPRegressor(max_iter=1, backend="numpy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.partial_fit(X_train, np.c_[y_train, y_train].astype(float))
    with pytest.raises(ValueError, match="y has 1 outputs, the model 2"):
        model.partial_fit(X_train, y_train.astype(float))


def test_alpha_is_weight_decay_alpha_over_the_batch():
    """One full-batch plain-SGD step with and without alpha, from the same initial weights
    (rebuilt here from the seed the estimator draws from random_state): the difference is
    -lr (alpha / batch) W_init, scikit-learn's L2 gradient for a batch."""
    from sklearn.utils import check_random_state

    X_train, _, y_train, _ = _digits()
    X, y = X_train[:100], y_train[:100]
    settings = dict(hidden_layer_sizes=(8,), solver="sgd", momentum=0.0, max_iter=1,
                    shuffle=False, learning_rate_init=0.1, random_state=0, backend="numpy",
                    batch_size=100)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        plain = MLPClassifier(alpha=0.0, **settings).fit(X, y)
        decayed = MLPClassifier(alpha=3.0, **settings).fit(X, y)
    seed = int(check_random_state(0).randint(2**31 - 1))
    initial = tn.MLP.from_sizes([64, 8, 10], "relu", "softmax", dtype="float64", seed=seed)
    for (W0, _), got, want in zip(initial.get_weights(), decayed.coefs_, plain.coefs_,
                                   strict=True):  # fmt: skip
        np.testing.assert_allclose(got - want, -0.1 * (3.0 / 100) * W0.T, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("Estimator", [MLPClassifier, MLPRegressor])
def test_the_lbfgs_objective_is_the_penalized_loss_and_its_gradient(Estimator):
    """The function L-BFGS-B minimizes: its gradient against central differences of its own
    value (float64, step 1e-6: truncation ~1e-12, rounding ~1e-10), and its value at the
    fitted weights against the loss recomputed here from predict, plus 0.5 alpha |W|^2 / n."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(12, 5))
    y = rng.integers(0, 3, 12) if Estimator is MLPClassifier else rng.normal(size=12)
    model = Estimator((4,), activation="tanh", solver="lbfgs", alpha=0.3, max_iter=2,
                      random_state=0, backend="numpy")  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X, y)
    targets = model._targets(y, first=False)
    objective, theta, _ = model._lbfgs_objective(X, targets)
    value, gradient = objective(theta.copy())
    numeric = np.empty_like(theta)
    for i in range(theta.size):
        step = np.zeros_like(theta)
        step[i] = 1e-6
        numeric[i] = (objective(theta + step)[0] - objective(theta - step)[0]) / 2e-6
    np.testing.assert_allclose(gradient, numeric, rtol=1e-6, atol=1e-8)
    objective(theta)  # the fitted weights back
    penalty = 0.5 * 0.3 * sum((W**2).sum() for W in model.coefs_) / len(X)
    if Estimator is MLPClassifier:
        p = model.predict_proba(X)
        data = -np.log(p[np.arange(len(X)), np.searchsorted(model.classes_, y)]).mean()
    else:
        data = 0.5 * ((model.predict(X) - y) ** 2).mean()
    assert value == pytest.approx(data + penalty, rel=1e-12)
    assert model.loss_ == pytest.approx(value, rel=1e-12)


def test_targets_that_do_not_match_the_fitted_model_are_clear_errors():
    """partial_fit with early stopping (scikit-learn's message), multilabel targets of another
    width, and single labels into a model fitted on multilabel targets."""
    X_train, _, y_train, _ = _digits()
    with pytest.raises(ValueError, match="partial_fit does not support early_stopping=True"):
        MLPClassifier(early_stopping=True, backend="numpy").partial_fit(
            X_train[:20], y_train[:20], classes=range(10)
        )
    labels = np.c_[y_train % 2, y_train < 5].astype(int)
    model = MLPClassifier((8,), solver="sgd", max_iter=2, backend="numpy", random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X_train, labels)
    with pytest.raises(ValueError, match="y has 3 labels, the model 2"):
        model.partial_fit(X_train, np.c_[labels, labels[:, :1]])
    with pytest.raises(ValueError, match="fitted on multilabel targets"):
        model.partial_fit(X_train, y_train % 2)


def test_adaptive_learning_rate_divides_by_five_as_scikit_learns():
    """tol so large that no epoch improves: every n_iter_no_change + 1 epochs the rate is
    divided by 5, until at most 1e-6, then training stops. The final rate and epoch count are
    scikit-learn's own estimator's under the same settings (the losses play no part)."""
    from sklearn.neural_network import MLPClassifier as TheirMLPClassifier

    X_train, _, y_train, _ = _digits()
    settings = dict(hidden_layer_sizes=(8,), solver="sgd", learning_rate="adaptive", tol=1e9,
                    n_iter_no_change=1, learning_rate_init=0.1, max_iter=500,
                    random_state=0)  # fmt: skip
    ours = MLPClassifier(**settings, backend="numpy").fit(X_train[:100], y_train[:100])
    theirs = TheirMLPClassifier(**settings).fit(X_train[:100], y_train[:100])
    assert ours.n_iter_ == theirs.n_iter_ < 500
    assert ours._optimizer.learning_rate == pytest.approx(theirs._optimizer.learning_rate)


def _recording_validation(model):
    """model._score_on wrapped: each call's (X, targets, score, the weights scored)."""
    calls, score_on = [], model._score_on

    def recorded(X, targets):
        score = score_on(X, targets)
        calls.append((X, targets, score, [W.copy() for W in model.coefs_]))
        return score

    model._score_on = recorded
    return calls


def test_early_stopping_ends_with_the_weights_of_the_best_validation_score():
    X_train, _, y_train, _ = _digits()
    model = MLPClassifier((16,), early_stopping=True, learning_rate_init=0.05, max_iter=12,
                          n_iter_no_change=50, random_state=0, backend="numpy")  # fmt: skip
    calls = _recording_validation(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X_train, y_train)
    scores = [score for _, _, score, _ in calls]
    assert scores == model.validation_scores_ and len(scores) == 12
    best = int(np.argmax(scores))
    assert best < 11, "this run's best epoch should not be its last"
    for ours, at_best in zip(model.coefs_, calls[best][3], strict=True):
        np.testing.assert_array_equal(ours, at_best)


def test_the_regressor_validation_score_is_r2():
    """As scikit-learn's: R² of the held-out rows (recomputed here by sklearn.metrics)."""
    from sklearn.metrics import r2_score

    X, y = make_regression(n_samples=300, n_features=8, noise=5.0, random_state=0)
    model = MLPRegressor((16,), early_stopping=True, max_iter=1, random_state=0,
                         backend="numpy")  # fmt: skip
    calls = _recording_validation(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X, y / y.std())
    X_val, targets, _, _ = calls[0]
    want = r2_score(targets.ravel(), model.predict(X_val))
    assert model.validation_scores_ == [pytest.approx(want, rel=1e-12)]
    assert model.best_validation_score_ == pytest.approx(want, rel=1e-12)
