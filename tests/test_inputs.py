"""Rough input: Fortran-ordered weights, ragged lists, float labels, raw pixels, a bad
NUMBA_NUM_THREADS; and no ``assert`` guarding anything in the package (``python -O`` drops
them)."""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import numpy as np
import pytest

import tinynet as tn
from tests.faults import clean_env, python

ROOT = Path(__file__).resolve().parents[1]


def _train_with_fortran_weights(batch: int) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    net = tn.MLP.from_sizes([6, 5, 3], "sigmoid", "softmax", seed=0)
    for layer in net.layers:
        M = rng.normal(0, 0.5, (layer.in_features, layer.out_features))
        layer.set_weights(M.T, rng.normal(0, 0.1, layer.out_features))  # a Fortran-ordered view
        assert layer.weight.data.flags.c_contiguous
    x = rng.random((64, 6))
    labels = rng.integers(0, 3, 64)
    net.fit(x, labels, tn.CrossEntropy(), tn.SGD(0.2, momentum=0.5), batch_size=batch, seed=1)
    return [w for pair in net.get_weights() for w in pair]


@pytest.mark.parametrize("batch", [1, 16, 64])
def test_fortran_ordered_weights_train_as_c_ordered_ones(backend_name, batch):
    # compared with the NumPy reference, itself fed the same Fortran-ordered views
    got = _train_with_fortran_weights(batch)
    with tn.use_backend("numpy"):
        expected = _train_with_fortran_weights(batch)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=2e-5, atol=2e-6)


def test_ragged_rows_are_a_shape_error(backend_name):
    net = tn.MLP.from_sizes([2, 2], "sigmoid", "sigmoid", seed=0)
    with pytest.raises(tn.ShapeError, match="rows of this list have different lengths"):
        net.predict([[1.0, 2.0], [3.0]])
    with pytest.raises(tn.ShapeError, match="targets must be a rectangular array"):
        net.train_step([[1.0, 2.0]], [[1.0, 0.0, 1.0], [0.0]], tn.SquaredError(), tn.SGD(0.1))


def test_float_labels_are_a_dtype_error_not_a_shape_error(backend_name):
    net = tn.MLP.from_sizes([2, 3], "sigmoid", "softmax", seed=0)
    with pytest.raises(tn.InvalidInputError, match=r"integer class labels.*float64.*astype"):
        net.fit(np.ones((4, 2)), np.array([0.0, 1.0, 2.0, 1.0]), tn.CrossEntropy(), tn.SGD(0.1))


def test_raw_uint8_pixels_without_rescaling_warn(backend_name):
    net = tn.MLP.from_sizes([4, 2], "sigmoid", "softmax", seed=0)
    pixels = np.array([[0, 255, 128, 7], [3, 9, 200, 1]], np.uint8)
    with pytest.warns(RuntimeWarning, match=r"raw pixels.*rescale=\(1 / 255"):
        net.fit(pixels, np.array([0, 1]), tn.CrossEntropy(), tn.SGD(0.1))
    scaled = tn.MLP.from_sizes([4, 2], "sigmoid", "softmax", seed=0, rescale=(1 / 255, 0.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scaled.fit(pixels, np.array([0, 1]), tn.CrossEntropy(), tn.SGD(0.1))
        net.fit(np.array([[0, 1, 1, 0]], np.uint8), [1], tn.CrossEntropy(), tn.SGD(0.1))


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_a_bad_numba_num_threads_is_a_clear_error(value):
    code = (
        "import warnings, tinynet as tn\n"
        "try:\n"
        "    tn.set_backend('numba')\n"
        "except tn.BackendError as exc:\n"
        "    print('ERROR', exc)\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    print('AUTO', tn.get_backend().name)\n"
        "print('WARNINGS', [str(w.message) for w in caught])\n"
    )
    done = python(code, clean_env(NUMBA_NUM_THREADS=value))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "ERROR backend 'numba' cannot be used: NUMBA_NUM_THREADS must be a positive " in out
    assert f"got '{value}'" in out
    assert "AUTO numpy" in out  # auto goes on, but says why
    assert "passed over 'numba'" in out.split("WARNINGS", 1)[1]


def test_no_assert_statement_guards_anything_in_the_package():
    sources = [*ROOT.joinpath("tinynet").rglob("*.py"), *ROOT.joinpath("kernels").rglob("*.py")]
    found = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for path in sources
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Assert)
    ]
    assert found == []
