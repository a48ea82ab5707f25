"""The documentation's Python blocks (docs/**/*.md), each run alone in a fresh interpreter as a
reader would paste it, and what their comments promise; the docs' build is `.ci/run`'s
`mkdocs build --strict`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.test_readme import _run

DOCS = Path(__file__).resolve().parents[1] / "docs"
BLOCKS = [
    pytest.param(block, id=f"{page.relative_to(DOCS)}:{number}")
    for page in sorted(DOCS.rglob("*.md"))
    for number, block in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), re.S))
]


def test_the_docs_have_blocks_to_run():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("block", BLOCKS)
def test_each_block_runs_alone_and_prints_what_it_promises(block, tmp_path):
    printed = _run(block, tmp_path).splitlines()
    promised = [line for line in block.splitlines() if line.startswith("print(")]
    assert len(printed) == len(promised)
    for line, said in zip(promised, printed, strict=True):
        comment = line.partition("#")[2].strip()
        if comment == "True":
            assert said == "True", (line, said)
        if comment.startswith("{'accuracy': about"):
            want = float(re.search(r"about ([0-9.]+)", comment).group(1))
            got = float(re.search(r"'accuracy': ([0-9.]+)", said).group(1))
            assert got >= want - 0.02, (line, said)
