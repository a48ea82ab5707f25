"""Facts about this machine for ``tinynet info`` and benchmark reports: CPU, threads, GPU."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import shutil
import subprocess

# The name on PyPI; `tinynet` there is an unrelated project. The import name stays `tinynet`.
DISTRIBUTION = "tinynet-mlp"


def install_hint(*extras: str) -> str:
    """How to install tinynet with one of ``extras``, from the index and from a clone."""
    from_index = " or ".join(f"pip install '{DISTRIBUTION}[{e}]'" for e in extras)
    from_clone = " or ".join(f'pip install -e ".[{e}]"' for e in extras)
    return f"{from_index} (from a clone of the repository: {from_clone})"


def blas_info() -> dict[str, str]:
    """Every BLAS loaded in this process, as threadpoolctl sees them: library, version, the
    kernels it chose for this CPU (``OPENBLAS_CORETYPE`` overrides them), threads, and the
    package that ships it (NumPy's serves the reference's GEMMs, SciPy's the Numba BLAS epoch)."""
    from threadpoolctl import threadpool_info

    pools = [p for p in threadpool_info() if p.get("user_api") == "blas"]
    if not pools:
        return {"blas": "none found"}

    def owner(path: str) -> str:
        folder = os.path.basename(os.path.dirname(path))  # e.g. numpy.libs, scipy.libs
        return folder.removesuffix(".libs")

    return {
        "blas": "; ".join(
            f"{p.get('internal_api')} {p.get('version')} ({owner(p.get('filepath', ''))}, "
            f"{p.get('architecture') or '?'} kernels, {p.get('num_threads')} threads)"
            for p in pools
        )
    }


def cpu_count() -> int:
    """Cores this process may run on (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def physical_memory() -> int | None:
    """This machine's memory in bytes; None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_numba_threads_variable() -> None:
    """BackendError naming NUMBA_NUM_THREADS when it is set to anything but a positive integer
    (Numba itself fails on import with "Number of threads specified must be > 0")."""
    value = os.environ.get("NUMBA_NUM_THREADS", "").strip()
    if not value:
        return
    try:
        valid = int(value) >= 1
    except ValueError:
        valid = False
    if not valid:
        from tinynet.errors import BackendError

        raise BackendError(
            f"backend 'numba' cannot be used: NUMBA_NUM_THREADS must be a positive integer, got "
            f"{value!r}; unset it to use every core this process may run on ({cpu_count()})"
        )


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


def gpu_info() -> str:
    """NVIDIA GPUs as nvidia-smi lists them (name, driver, memory), or why there are none."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "none detected (no nvidia-smi)"
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return f"none usable (nvidia-smi failed: {exc})"
    return "; ".join(out.splitlines()) or "none detected"


def machine_info() -> dict[str, str]:
    return {
        "cpu": cpu_model(),
        "cores": str(cpu_count()),
        "python": platform.python_version(),
        "numpy": package_version("numpy") or "?",
        "numba": package_version("numba") or "not installed",
        "cupy": cupy_version() or "not installed",
        "gpu": gpu_info(),
        **blas_info(),
    }
