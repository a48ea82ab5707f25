"""Numba's on-disk cache for tinynet's kernels: versioned, checksummed, never in the package.

Numba's own ``cache=True`` looks for a writable folder next to the source (the installed
package), then in ``~/.cache``, and fails with "no locator available" when it finds none; it
trusts files by their timestamp, and a damaged file crashes every later run (``UnpicklingError``,
``EOFError``, or LLVM's "Invalid abbrev number"). ``cached(dispatcher)`` gives a kernel a cache
of our own instead:

* one folder per version of the kernel sources, ``<root>/<sha256 of the sources>``: a kernel is
  never loaded next to callers compiled against another version of it. The root is
  ``$NUMBA_CACHE_DIR/tinynet`` when that is set, else ``$XDG_CACHE_HOME/tinynet/numba``, else
  ``~/.cache/tinynet/numba``;
* every index and data file starts with the SHA-256 of the rest, checked before anything is
  unpickled: a truncated, zeroed, random or bit-flipped file is discarded (deleted where we may)
  and the kernel recompiled, with one warning;
* a read-only folder is used as it is (a warm cache loads); where nothing can be written, kernels
  compile in memory, with one warning saying where and why;
* while kernels compile (Numba's "numba:compile" event, raised only for a kernel found neither in
  memory nor in the cache), one line on stderr says so, once per process: a start slowed by
  other work on the machine is never blamed on compiling;
* Numba's private caching classes (``numba.core.caching``, ``Dispatcher._cache``) are checked at
  import; a Numba without them gets no cache at all and one warning, never a silent fallback
  into the package folder.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import pickle
import sys
import threading
import warnings
from collections.abc import Iterable
from typing import Any

import numba
from numba.core import event as numba_event

log = logging.getLogger("tinynet")
DIGEST = hashlib.sha256().digest_size

try:  # Numba's private caching API (0.59 to 0.68 at least)
    from numba.core.caching import (
        CompileResultCacheImpl,
        FunctionCache,
        IndexDataCacheFile,
        NullCache,
        _CacheLocator,
    )

    MISSING_INTERNALS: str | None = None
except ImportError as _exc:
    MISSING_INTERNALS = str(_exc)


class _State:
    """What this process has found out about the cache, and the warnings it has given."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.unwritable: str | None = None  # why nothing can be written, once that is known
        self.warned: set[str] = set()
        self.compiling_said = False
        self.probing = False  # check_active's probe compiles: not worth a notice
        self.where = "?"  # the cache folder, or why kernels compile in memory
        self.consulted = False  # Numba has asked one of our caches for a kernel


_state = _State()


def _warn_once(kind: str, message: str) -> None:
    with _state.lock:
        if kind in _state.warned:
            return
        _state.warned.add(kind)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def source_hash(paths: Iterable[str]) -> str:
    """The first 16 hex digits of the SHA-256 of the files' contents, in order."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()[:16]


def cache_root() -> str | None:
    """The folder holding one sub-folder per kernel version; None when there is nowhere sensible
    (no NUMBA_CACHE_DIR or XDG_CACHE_HOME, and a HOME that does not exist)."""
    if numba.config.CACHE_DIR:
        return os.path.join(numba.config.CACHE_DIR, "tinynet")
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return os.path.join(xdg, "tinynet", "numba")
    home = os.path.expanduser("~")
    if home == "~" or not os.path.isdir(home):
        return None  # never create a missing home folder
    return os.path.join(home, ".cache", "tinynet", "numba")


def _sealed(payload: bytes) -> bytes:
    return hashlib.sha256(payload).digest() + payload


def _opened(sealed: bytes, path: str) -> bytes:
    """The payload of a sealed file; ValueError when its checksum does not match."""
    payload = sealed[DIGEST:]
    if len(sealed) < DIGEST or hashlib.sha256(payload).digest() != sealed[:DIGEST]:
        raise ValueError(f"checksum mismatch in {path} ({len(sealed)} bytes)")
    return payload


if MISSING_INTERNALS is None:

    class _Locator(_CacheLocator):
        """The version folder for every kernel; a stamp of the sources' hash (not the mtime)."""

        folder: str = ""
        stamp: str = ""

        def __init__(self, py_func: Any, py_file: str) -> None:
            self._lineno = py_func.__code__.co_firstlineno

        def get_cache_path(self) -> str:
            return self.folder

        def get_source_stamp(self) -> str:
            return self.stamp

        def get_disambiguator(self) -> str:
            return str(self._lineno)

        @classmethod
        def from_function(cls, py_func: Any, py_file: str) -> _Locator:
            return cls(py_func, py_file)

    class _CheckedFile(IndexDataCacheFile):
        """Numba's index and data files, each sealed with its SHA-256 and checked before it is
        unpickled. Writes go through Numba's atomic temp-file-and-rename."""

        def _read_checked(self, path: str) -> bytes:
            with open(path, "rb") as f:
                return _opened(f.read(), path)

        def _load_index(self) -> dict:
            try:
                payload = self._read_checked(self._index_path)
            except FileNotFoundError:
                return {}
            version, stamp, overloads = pickle.loads(payload)
            if version != self._version or stamp != self._source_stamp:
                return {}  # another Numba or other sources: recompiled and overwritten
            return overloads

        def _save_index(self, overloads: dict) -> None:
            payload = pickle.dumps((self._version, self._source_stamp, overloads), protocol=-1)
            with self._open_for_write(self._index_path) as f:
                f.write(_sealed(payload))

        def _load_data(self, name: str) -> Any:
            return pickle.loads(self._read_checked(self._data_path(name)))

        def _save_data(self, name: str, data: Any) -> None:
            with self._open_for_write(self._data_path(name)) as f:
                f.write(_sealed(self._dump(data)))

    class _KernelCacheImpl(CompileResultCacheImpl):
        _locator_classes = (_Locator,)  # ours only: never a folder inside the package

    class KernelCache(FunctionCache):
        """A kernel's cache: damaged entries are discarded, unwritable folders tolerated."""

        _impl_class = _KernelCacheImpl

        def __init__(self, py_func: Any) -> None:
            super().__init__(py_func)
            self._cache_file = _CheckedFile(
                cache_path=self._cache_path,
                filename_base=self._impl.filename_base,
                source_stamp=self._impl.locator.get_source_stamp(),
            )

        def load_overload(self, sig: Any, target_context: Any) -> Any:
            _state.consulted = True
            try:
                result = super().load_overload(sig, target_context)
            except OSError:  # a folder that cannot be read (NUMBA_CACHE_DIR under a file):
                result = None  # no entry, not a damaged one; save_overload says why, once
            except Exception as exc:  # damage found by the checksum, or a file Numba rejects
                self._discard(exc)
                result = None
            return result

        def save_overload(self, sig: Any, data: Any) -> None:
            if _state.unwritable is None:
                try:
                    super().save_overload(sig, data)
                    return
                except OSError as exc:
                    _state.unwritable = f"cannot write in {self._cache_path}: {exc}"
            _warn_once(
                "unwritable",
                f"tinynet's Numba kernel cache: {_state.unwritable}; kernels compile in memory "
                "for this process (a few seconds at each start). Set NUMBA_CACHE_DIR or "
                "XDG_CACHE_HOME to a writable folder to keep them.",
            )

        def _discard(self, exc: Exception) -> None:
            base = os.path.join(self._cache_path, self._impl.filename_base)
            files = [base + ".nbi", *glob.glob(glob.escape(base) + ".*.nbc")]
            removed = True
            for path in files:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
                except OSError:
                    removed = False
            action = "discarded it" if removed else "could not delete it (read-only)"
            _warn_once(
                "damaged",
                f"tinynet found a damaged Numba cache entry for {self._py_func.__name__} in "
                f"{self._cache_path} ({type(exc).__name__}: {exc}); {action} and recompiled. "
                "Other damaged entries are handled the same way without another warning.",
            )
            log.debug("damaged cache entry %s: %r", base, exc)


class _CompileNotice(numba_event.Listener):
    """One line on stderr when tinynet's kernels start compiling, once per process."""

    def on_start(self, event: Any) -> None:
        py_func = getattr(event.data.get("dispatcher"), "py_func", None)
        if _state.probing or not getattr(py_func, "__module__", "").startswith(__package__):
            return  # the probe, or a user's own Numba code
        with _state.lock:
            if _state.compiling_said:
                return
            _state.compiling_said = True
        sys.stderr.write(
            "tinynet: compiling Numba kernels that are not in the cache yet (seconds, once per "
            f"kind of epoch; cache: {_state.where})\n"
        )
        sys.stderr.flush()

    def on_end(self, event: Any) -> None:
        pass


_compile_notice = _CompileNotice()


def configure(sources: Iterable[str]) -> str:
    """Point the kernel caches at the version folder of ``sources``; a line for ``info``."""
    numba_event.register("numba:compile", _compile_notice)
    if MISSING_INTERNALS is not None:
        _state.where = f"off (this Numba lacks the caching internals: {MISSING_INTERNALS})"
        return _state.where
    root = cache_root()
    stamp = source_hash(sources)
    _Locator.stamp = stamp
    blocked = _file_in_the_way(root) if root is not None else None
    if blocked is not None:  # say so once, before anything tries the folder
        _state.unwritable = f"{blocked} is a file, so {root} cannot be a folder"
        _warn_once(
            "unwritable",
            f"tinynet's Numba kernel cache: {_state.unwritable}; kernels compile in memory "
            "for this process (a few seconds at each start). Set NUMBA_CACHE_DIR or "
            "XDG_CACHE_HOME to a writable folder to keep them.",
        )
        _Locator.folder = os.path.join(root, stamp)
        _state.where = f"in memory only ({_state.unwritable})"
        return _state.where
    if root is None:
        _state.unwritable = "no NUMBA_CACHE_DIR, no XDG_CACHE_HOME and no home folder"
        _Locator.folder = os.path.join(os.sep, "nonexistent", "tinynet", stamp)  # never created
        _state.where = f"in memory only ({_state.unwritable})"
    else:
        _Locator.folder = _state.where = os.path.join(root, stamp)
    return _state.where


def _file_in_the_way(folder: str) -> str | None:
    """The nearest existing path at or above ``folder`` when it is a file, not a folder."""
    path = os.path.abspath(folder)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent
    return None if os.path.isdir(path) else path


def check_active(probe: Any) -> bool:
    """Call ``probe`` (a cached kernel taking no arguments, not called before) and check that
    Numba asked our cache for it: a Numba that still has the classes ``cached`` relies on but
    no longer consults ``Dispatcher._cache`` would otherwise recompile everything at every start
    without a word. Warns once when it did not; True when the cache is in use."""
    if MISSING_INTERNALS is not None or not isinstance(probe._cache, KernelCache):
        return False  # cached() has warned already
    _state.probing = True
    try:
        probe()
    finally:
        _state.probing = False
    if not _state.consulted:
        _warn_once(
            "internals",
            f"Numba {numba.__version__} did not consult tinynet's kernel cache; kernels compile "
            "in memory at every start (several seconds).",
        )
    return _state.consulted


def cached(dispatcher: Any) -> Any:
    """Give a Numba dispatcher (``njit`` without ``cache=True``) tinynet's kernel cache. Checks
    that the dispatcher has the cache slot this relies on; if not, warns once and leaves the
    kernel to compile in memory."""
    if numba.config.DISABLE_JIT:  # a plain function: NumbaBackend refuses to start, saying why
        return dispatcher
    if MISSING_INTERNALS is None and isinstance(getattr(dispatcher, "_cache", None), NullCache):
        dispatcher._cache = KernelCache(dispatcher.py_func)
        return dispatcher
    _warn_once(
        "internals",
        f"Numba {numba.__version__} lacks the internals tinynet's kernel cache uses "
        f"({MISSING_INTERNALS or 'Dispatcher._cache'}); kernels compile in memory at every "
        "start (several seconds).",
    )
    return dispatcher


__all__ = [
    "MISSING_INTERNALS",
    "cache_root",
    "cached",
    "check_active",
    "configure",
    "source_hash",
]
