"""Model files on disk: an atomic, permission-keeping writer and a reader that checks before it
allocates. ``MLP.save`` and ``tinynet.load`` (model.py) build on these; this module knows files
and ``.npz`` members, not layers.

A model file is an uncompressed ``.npz`` (a zip of ``.npy`` members): ``__format__`` and
``__config__`` (JSON) as 0-d string arrays, and ``<layer index>.<parameter name>`` arrays.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import tempfile
import time
import zipfile
from collections.abc import Callable
from typing import IO, Any

import numpy as np

from tinynet.errors import ModelFileError

TEMP_PREFIX = ".tinynet-"
TEMP_SUFFIX = ".tmp"
_TEMP_NAME = re.compile(re.escape(TEMP_PREFIX) + r"(\d+)-.*" + re.escape(TEMP_SUFFIX) + "$")
STALE_AFTER_S = 24 * 3600  # a temp file whose writer we cannot see (another host) is this old
MAX_TEXT_BYTES = 1 << 20  # __format__ and __config__
MAX_DEFLATE_RATIO = 1100  # deflate cannot do better than about 1032:1


# -- writing --------------------------------------------------------------------------------
def _umask() -> int:
    try:
        with open("/proc/self/status") as f:  # Linux: read without changing it
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: the only way to read it is to set it
    os.umask(mask)
    return mask


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def remove_stale_temp_files(folder: str) -> list[str]:
    """Delete temp files an earlier, killed save left in ``folder``: those of processes that no
    longer run, or older than a day. Returns their paths."""
    removed = []
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            match = _TEMP_NAME.match(entry.name)
            if not match or not entry.is_file(follow_symlinks=False):
                continue
            try:
                old = time.time() - entry.stat(follow_symlinks=False).st_mtime > STALE_AFTER_S
                if old or not _pid_alive(int(match.group(1))):
                    os.unlink(entry.path)
                    removed.append(entry.path)
            except OSError:
                continue
    return removed


def write_atomically(
    path: str | os.PathLike, write: Callable[[IO[bytes]], None], what: str = "the model"
) -> str:
    """Call ``write(f)`` on a temp file next to ``path``, then rename it over ``path``: after a
    crash or kill at any point, ``path`` holds the old or the new contents, never a mix.

    A symlink is written through (its target is replaced). An existing file keeps its
    permission bits; a new one gets 0666 less the umask. Stale temp files of earlier killed
    saves in the folder are removed. Raises ModelFileError naming the file for every OSError
    (missing folder, a directory in the way, disk full, ...). Returns the path written.
    """
    shown = os.fspath(path)
    target = os.path.realpath(shown)  # through symlinks, to the file that should change
    folder = os.path.dirname(target)

    def fail(reason: str, exc: BaseException | None = None) -> ModelFileError:
        error = ModelFileError(f"cannot save {what} to {shown}: {reason}")
        error.__cause__ = exc
        return error

    if not os.path.isdir(folder):
        raise fail(f"the folder {folder} does not exist")
    if os.path.isdir(target):
        raise fail("it is a directory")
    try:
        mode = os.stat(target).st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    except OSError as exc:
        raise fail(exc.strerror or str(exc), exc) from exc
    remove_stale_temp_files(folder)
    try:
        fd, tmp = tempfile.mkstemp(
            prefix=f"{TEMP_PREFIX}{os.getpid()}-", suffix=TEMP_SUFFIX, dir=folder
        )
    except OSError as exc:
        raise fail(exc.strerror or str(exc), exc) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            why = os.strerror(exc.errno) if exc.errno else str(exc)
            if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
                why += " (the old file, if any, is unchanged)"
            raise fail(why, exc) from exc
        raise
    return target


# -- reading --------------------------------------------------------------------------------
class ModelArchive:
    """A model file opened for reading; every fault is a ModelFileError naming the file.

    Members are read only when asked for, and only after their declared sizes check out against
    the archive: a few-KB file cannot make the reader allocate gigabytes.
    """

    def __init__(self, path: str | os.PathLike, what: str = "model file") -> None:
        self.path = os.fspath(path)
        self.what = what  # "model file", "checkpoint": how errors name the file
        if not os.path.isfile(self.path):
            raise ModelFileError(f"{what} not found: {self.path}")
        try:
            self._zip = zipfile.ZipFile(self.path)
            self._members = {info.filename: info for info in self._zip.infolist()}
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise self.error(f"not a zip archive ({exc})") from exc
        self._size = os.path.getsize(self.path)

    def __enter__(self) -> ModelArchive:
        return self

    def __exit__(self, *exc: object) -> None:
        self._zip.close()

    def error(self, reason: str) -> ModelFileError:
        return ModelFileError(f"not a tinynet {self.what}: {self.path} ({reason})")

    def has(self, name: str) -> bool:
        return name + ".npy" in self._members

    def _open(self, name: str) -> tuple[zipfile.ZipInfo, IO[bytes]]:
        info = self._members.get(name + ".npy")
        if info is None:
            raise self.error(f"member {name!r} is missing")
        if info.compress_type == zipfile.ZIP_STORED:
            honest = info.compress_size == info.file_size <= self._size
        else:
            honest = info.file_size <= MAX_DEFLATE_RATIO * info.compress_size + 1024
        if not honest:
            raise self.error(
                f"member {name!r} claims {info.file_size:,} bytes in a {self._size:,}-byte file"
            )
        try:
            return info, self._zip.open(info)
        except (zipfile.BadZipFile, NotImplementedError, OSError, ValueError) as exc:
            raise self.error(f"member {name!r}: {exc}") from exc

    def _header(self, name: str, f: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype]:
        fmt = np.lib.format
        try:
            version = fmt.read_magic(f)
            if version == (1, 0):
                return fmt.read_array_header_1_0(f)
            if version in ((2, 0), (3, 0)):
                return fmt.read_array_header_2_0(f)
        except (ValueError, OSError, EOFError, SyntaxError, zipfile.BadZipFile) as exc:
            raise self.error(f"member {name!r} is not a .npy array ({exc})") from exc
        raise self.error(f"member {name!r} has .npy version {version}")

    def text(self, name: str) -> str:
        """A 0-d string member (``__format__``, ``__config__``)."""
        info, f = self._open(name)
        with f:
            if info.file_size > MAX_TEXT_BYTES:
                raise self.error(f"member {name!r} is {info.file_size:,} bytes")
            shape, _, dtype = self._header(name, f)
            if shape != () or dtype.kind != "U":
                raise self.error(f"member {name!r} is not a string")
            data = self._read_exactly(name, f, dtype.itemsize)
        return str(np.frombuffer(data, dtype)[0])

    def array(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """A float member that must have ``shape``; checked before any of it is read."""
        info, f = self._open(name)
        with f:
            found, fortran, dtype = self._header(name, f)
            if found != shape:
                raise self.error(f"member {name!r} has shape {found}, the config needs {shape}")
            if dtype.kind != "f" or dtype.hasobject:
                raise self.error(f"member {name!r} holds {dtype}, not floats")
            nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
            if info.file_size != f.tell() + nbytes:
                raise self.error(
                    f"member {name!r} is {info.file_size:,} bytes, its header needs "
                    f"{f.tell() + nbytes:,}"
                )
            data = self._read_exactly(name, f, nbytes)
        return np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C")

    def _read_exactly(self, name: str, f: IO[bytes], nbytes: int) -> bytes:
        try:
            data = f.read(nbytes)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            raise self.error(f"member {name!r} is damaged ({exc})") from exc
        if len(data) != nbytes:
            raise self.error(f"member {name!r} is cut short")
        return data


def parse_config(text: str, path: str) -> Any:
    """The JSON of ``__config__``; ModelFileError naming the file when it is not JSON."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise ModelFileError(
            f"not a tinynet model file: {path} (config is not JSON: {reason})"
        ) from None
