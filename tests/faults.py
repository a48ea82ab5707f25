"""Helpers that inject faults for real: child processes, read-only folders that hold for root."""

from __future__ import annotations

import ctypes
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2


def _drop_write_override() -> None:
    """In the child before exec: give up root's right to ignore file permissions, so that a
    read-only folder is read-only to it as to any other user."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _can_drop_override() -> bool:
    try:
        done = subprocess.run(
            [sys.executable, "-c", "pass"], preexec_fn=_drop_write_override, timeout=60
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def python(
    code: str,
    env: dict[str, str],
    *,
    read_only_respected: bool = False,
    timeout: float = 300,
    cwd: str | os.PathLike | None = None,
) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python with ``env``. With ``read_only_respected``, as root the
    child runs without CAP_DAC_OVERRIDE (a non-root user needs nothing), or the test skips."""
    preexec = None
    if read_only_respected and os.geteuid() == 0:
        if not _can_drop_override():
            pytest.skip("running as root and cannot drop CAP_DAC_OVERRIDE here")
        preexec = _drop_write_override
    return subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=preexec,
        cwd=cwd,
    )


def make_read_only(folder: Path) -> None:
    """Remove every write permission under ``folder`` (the folder included)."""
    for path in [*folder.rglob("*"), folder]:
        mode = path.stat().st_mode
        path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def make_writable(folder: Path) -> None:
    for path in [folder, *folder.rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)


def clean_env(**overrides: str) -> dict[str, str]:
    """os.environ without the variables that steer caches and backends, plus ``overrides``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME", "TINYNET_BACKEND")
    }
    env.update(overrides)
    return env


def one_line_cli_error(capsys, argv: list[str], *patterns: str) -> str:
    """``tinynet argv`` in this process exits 2 with one line on stderr, ``tinynet: error:``
    and each regex of ``patterns`` in it; returns the line."""
    import re

    from tinynet.cli import main

    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors exit from inside main
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("tinynet: error:")
    for pattern in patterns:
        assert re.search(pattern, err), (pattern, err)
    return err


def cli_in_read_only_folder(folder: Path, argv: list[str]) -> subprocess.CompletedProcess:
    """``tinynet argv`` in a child process while ``folder`` (made here) is read-only to it,
    root included."""
    folder.mkdir()
    make_read_only(folder)
    try:
        code = f"import sys; from tinynet.cli import main\nsys.exit(main({argv!r}))\n"
        return python(code, clean_env(), read_only_respected=True)
    finally:
        make_writable(folder)
