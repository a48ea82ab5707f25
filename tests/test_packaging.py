"""The distribution name and every install instruction: `tinynet` on PyPI is another project."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import tinynet as tn
from tinynet.system import DISTRIBUTION, install_hint

ROOT = Path(__file__).resolve().parents[1]
# `pip install tinynet`, `pip install 'tinynet[...]'`, `pip install "tinynet"`: the other project.
OTHER_PROJECT = re.compile(r"""pip install (-U )?['"]?tinynet(\[|['"\s]|$)""", re.MULTILINE)


def _project_files() -> list[Path]:
    files = subprocess.run(
        ["git", "ls-files", "*.py", "*.md", "*.toml", ".ci/run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [ROOT / f for f in files if (ROOT / f).is_file()]


def test_pyproject_names_the_distribution_the_messages_name():
    # tomllib is 3.11+, and [project] is the first table with a `name` key
    name = re.search(r'^name = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert name == DISTRIBUTION != "tinynet"


def test_the_installed_distribution_provides_the_tinynet_package():
    assert DISTRIBUTION in importlib.metadata.packages_distributions()["tinynet"]
    assert importlib.metadata.version(DISTRIBUTION) == tn.__version__


def test_no_instruction_installs_the_unrelated_tinynet():
    offenders = [
        f"{path.relative_to(ROOT)}: {match.group(0)!r}"
        for path in _project_files()
        if path.name != "test_packaging.py"
        for match in OTHER_PROJECT.finditer(path.read_text())
    ]
    assert offenders == []


def test_install_hint_gives_the_index_name_and_the_clone_command():
    hint = install_hint("gpu-cuda12")
    assert f"pip install '{DISTRIBUTION}[gpu-cuda12]'" in hint
    assert 'pip install -e ".[gpu-cuda12]"' in hint


def test_the_cli_version_names_the_distribution():
    out = subprocess.run(
        [sys.executable, "-m", "tinynet.cli", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["tinynet", tn.__version__, f"({DISTRIBUTION})"]
