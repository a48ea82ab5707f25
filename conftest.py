"""Root conftest: ``pytest --benchmark`` runs the benchmark suite, plain ``pytest`` the tests.

pytest-benchmark has no ``--benchmark`` flag of its own (argparse rejects it as an ambiguous
prefix of its ``--benchmark-*`` flags), so we register it here. Its own flags keep working:
``--benchmark-only``, ``--benchmark-json``, ``--benchmark-compare``, ...
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).parent
BENCHMARKS = ROOT / "benchmarks"
TESTS = ROOT / "tests"
DEFAULT_JSON = ROOT / ".benchmarks" / "latest.json"


def pytest_addoption(parser):
    parser.addoption(
        "--benchmark",
        action="store_true",
        default=False,
        help="run the benchmark suite in benchmarks/ instead of the tests; writes "
        f"{DEFAULT_JSON.relative_to(ROOT)} unless --benchmark-json is given",
    )


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _benchmarks_requested(config) -> bool:
    if config.getoption("--benchmark") or config.getoption("benchmark_only", False):
        return True
    if config.args_source != pytest.Config.ArgsSource.ARGS:  # testpaths, not typed by the user
        return False
    return any(_inside(Path(arg.split("::")[0]).resolve(), BENCHMARKS) for arg in config.args)


def pytest_configure(config):
    if config.getoption("--benchmark") and config.getoption("benchmark_json", None) is None:
        # pytest-benchmark >= 5.3 takes a path here (older releases took an open file, which
        # 5.3 passes to open() and crashes: pyproject requires >= 5.3).
        DEFAULT_JSON.parent.mkdir(exist_ok=True)
        config.option.benchmark_json = DEFAULT_JSON


def pytest_ignore_collect(collection_path: Path, config):
    path = collection_path.resolve()
    if _inside(path, BENCHMARKS) and not _benchmarks_requested(config):
        return True
    if _inside(path, TESTS) and config.getoption("--benchmark"):
        return True
    return None
