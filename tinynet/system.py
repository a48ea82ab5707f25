"""Facts about this machine for ``tinynet info`` and benchmark reports: CPU, threads, GPU."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform


def blas_info() -> dict[str, str]:
    """BLAS library and its thread count, as threadpoolctl sees them."""
    from threadpoolctl import threadpool_info

    pools = [p for p in threadpool_info() if p.get("user_api") == "blas"]
    if not pools:
        return {"blas": "none found"}
    pool = pools[0]
    return {
        "blas": f"{pool.get('internal_api')} {pool.get('version')}",
        "blas_threads": str(pool.get("num_threads")),
    }


def cpu_count() -> int:
    """Cores this process may run on (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_version(name: str) -> str | None:
    """Installed version of a distribution, or None; does not import it."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def cupy_version() -> str | None:
    if importlib.util.find_spec("cupy") is None:
        return None
    for dist in ("cupy-cuda13x", "cupy-cuda12x", "cupy"):
        version = package_version(dist)
        if version:
            return f"{version} ({dist})"
    return "installed"


def machine_info() -> dict[str, str]:
    return {
        "cpu": cpu_model(),
        "cores": str(cpu_count()),
        "python": platform.python_version(),
        "numpy": package_version("numpy") or "?",
        "numba": package_version("numba") or "not installed",
        "cupy": cupy_version() or "not installed",
        **blas_info(),
    }
