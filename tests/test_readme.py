"""The README's Python blocks, each run alone in a fresh interpreter as a reader would paste it;
the numbers its comments promise are checked against what it prints."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.faults import clean_env

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def _run(code: str, cwd: Path, **env: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_the_readme_has_the_three_blocks_these_tests_run():
    assert len(BLOCKS) == 3


def test_the_tutorial_snippet_prints_what_its_comments_say(tmp_path):
    block = BLOCKS[0]
    # the values after "# " on the print lines, in order
    promised = [
        float(re.search(r"#\s*([0-9.]+)", line).group(1))
        for line in block.splitlines()
        if line.startswith("print(")
    ]
    printed = [float(line) for line in _run(block, tmp_path).split()]
    assert len(printed) == len(promised) == 2
    for got, want in zip(printed, promised, strict=True):
        digits = len(str(want).split(".")[1])
        assert round(got, digits) == want


def test_the_mnist_snippet_runs_alone(tmp_path, mnist_dir):
    out = _run(BLOCKS[1], tmp_path, TINYNET_DATA_DIR=str(mnist_dir))
    accuracy = float(re.search(r"'accuracy': ([0-9.]+)", out).group(1))
    assert accuracy > 0.975
    assert (tmp_path / "mnist.npz").is_file()


def test_the_ecosystem_snippet_prints_what_its_comments_say(tmp_path):
    """scikit-learn search, ONNX round trip through onnxruntime, PyTorch weights."""
    for module in ("sklearn", "onnxruntime", "torch"):
        pytest.importorskip(module)
    lines = _run(BLOCKS[2], tmp_path).splitlines()
    assert 0.95 <= float(lines[0]) <= 1.0  # "about 0.97"
    assert lines[1:3] == ["True", "True"]
    assert lines[3].startswith("MLP([") and (tmp_path / "digits.onnx").is_file()


@pytest.mark.parametrize("index", [0, 1, 2])
def test_each_block_imports_what_it_uses(index):
    block = BLOCKS[index]
    for name, module in (("tn", "tinynet"), ("np", "numpy")):
        if re.search(rf"\b{name}\.", block):
            assert re.search(rf"import .*\b{module} as {name}\b", block), (index, name)
