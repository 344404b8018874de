"""Atomic file and folder writes: a reader sees the old artifact or the new one, never half,
and never nothing."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import BusyError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; run folders are then not locked
    fcntl = None

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2  # linux/fs.h
try:  # glibc >= 2.28 exports renameat2; musl, macOS and Windows do not
    _renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    _renameat2.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
except (AttributeError, OSError, TypeError):
    _renameat2 = None


def _umask_mode(mode: int) -> int:
    """``mode`` as the process umask would leave it (mkstemp/mkdtemp always use 0600/0700)."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a folder be opened
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, _umask_mode(0o666))
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        if e.filename is not None and Path(e.filename) != tmp:
            raise
        # Name the artifact, not our temporary file (OSError picks the subclass from errno).
        raise OSError(e.errno, e.strerror, str(path)) from e
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def exchange(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the C
    library or the file system has no such call."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def recover_dir(path: str | os.PathLike) -> None:
    """Clean up after an :func:`atomic_dir` write that was killed: a ``path`` missing with its
    ``.old`` copy beside it (killed between the two renames of the fallback swap) gets the old
    folder back; temporary and old folders of dead processes are removed. Folders of live
    writers are left alone (their names carry the writer's process id)."""
    path = Path(path)
    leftovers = []
    for p in path.parent.glob(f".{path.name}.*"):
        parts = p.name[len(path.name) + 2 :].split(".")
        kind = "old" if parts[0] == "old" else "tmp" if p.name.endswith(".tmp") else None
        pid = parts[1] if kind == "old" and len(parts) > 1 else parts[0]
        if kind and pid.isdigit() and not _alive(int(pid)) and p.is_dir():
            leftovers.append((kind, p))
    olds = sorted((p for kind, p in leftovers if kind == "old"), key=lambda p: p.stat().st_mtime)
    if olds and not path.exists():
        os.rename(olds[-1], path)
        _fsync_dir(path.parent)
    for _, p in leftovers:
        if p.exists():
            shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success it becomes ``path``.

    An existing ``path`` is swapped with the new folder in one ``renameat2(RENAME_EXCHANGE)``
    (Linux, glibc 2.28+), so a reader finds the old folder or the new one and never none. Where
    that call does not exist (macOS, musl, Windows, some network file systems) the swap is two
    renames, and a reader between them finds no folder; a kill between them leaves the old
    folder as ``.NAME.old.PID``, which the next write (:func:`recover_dir`) puts back.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(path)
    tmp = Path(
        tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    )
    os.chmod(tmp, _umask_mode(0o777))
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb+") as fh:
                    os.fsync(fh.fileno())
        _fsync_dir(tmp)
        if not path.exists():
            os.rename(tmp, path)
        elif not exchange(tmp, path):  # tmp now holds the old folder, removed below
            old = path.with_name(f".{path.name}.old.{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


_held: dict[str, int] = {}  # folder -> descriptor of its lock file, held by this process


def lock_folder(path: str | os.PathLike, what: str = "folder") -> None:
    """Hold an exclusive lock on the folder ``path`` (``fcntl.flock`` on the folder itself, so
    no lock file is left in it) until this process exits; BusyError when another process holds
    it. The lock is the kernel's: it goes with the process, however that ends, so a killed run
    never leaves a stale lock. Taking it again in the same process is a no-op (one process runs
    one training at a time)."""
    path = Path(path)
    key = str(path.resolve())
    if fcntl is None or key in _held:
        return
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise BusyError(
            f"{what} {path} is in use by another process (fer-edge train --out {path}?); wait "
            "for it to finish or choose another --out"
        ) from None
    _held[key] = fd
