"""Atomic file writes: a reader sees the old file or the whole new one, never a part.

Every writer of an output file goes through :func:`atomic_write`: write to a
temp name (beside the target, or in *temp_dir* on the same filesystem, so
the rename is atomic), optionally fsync, rename into place, and remove the
temp file on any error, so a failed or interrupted write leaves no ``.part``
behind. The temp name is ``.<name>.<pid>.<8 hex>.part``, hidden and ending in
``.part`` (what :meth:`~niffler.net.writer.InstanceWriter.prepare` sweeps),
with ``<name>`` cut so the whole fits in :data:`NAME_MAX` bytes: a target
name that fits the filesystem always has a temp name that does. Missing
folders are created only when an open or rename finds them missing: no extra
system call per file on the receive path.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

__all__ = ["NAME_MAX", "atomic_write", "remove_temp_files", "temp_name", "write_bytes_atomic"]

#: Longest file name (in bytes) most filesystems allow.
NAME_MAX = 255


def temp_name(name: str) -> str:
    """Return a fresh temp name for the target file *name*, at most :data:`NAME_MAX` bytes.

    ``.<name>.<pid>.<8 hex>.part``: the pid and random hex make it unique; a
    long *name* is cut (at a character boundary) to leave room for them.
    """
    tail = f".{os.getpid()}.{uuid.uuid4().hex[:8]}.part"
    raw = os.fsencode(name)
    room = NAME_MAX - 1 - len(tail)
    if len(raw) > room:
        while room and raw[room] & 0xC0 == 0x80:  # do not cut a UTF-8 character in two
            room -= 1
        name = os.fsdecode(raw[:room])
    return f".{name}{tail}"


def remove_temp_files(folder: Path, pid: int) -> int:
    """Remove the temp files process *pid* left in *folder* (it died mid-write); return how many."""
    removed = 0
    for leftover in folder.glob(f".*.{pid}.*.part"):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()
            removed += 1
    return removed


def _open(temp: Path, mode: str, encoding: str | None, newline: str | None) -> IO[Any]:
    if mode == "wb":
        return open(temp, "wb")
    return open(temp, "w", encoding=encoding, newline=newline)


@contextlib.contextmanager
def atomic_write(
    path: Path,
    mode: str = "w",
    *,
    fsync: bool = False,
    temp_dir: Path | None = None,
    encoding: str | None = "utf-8",
    newline: str | None = "",
) -> Iterator[IO[Any]]:
    """Yield a handle on a temp file; rename it to *path* if the block ends cleanly.

    *mode* is ``"w"`` (text; *encoding* and *newline* apply, and the default
    suits :mod:`csv`) or ``"wb"``. The temp file is a hidden ``.part`` beside
    *path*, or a ``.part`` in *temp_dir*, which must be on the same filesystem.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', not {mode!r}")
    folder = temp_dir if temp_dir is not None else path.parent
    temp = folder / temp_name(path.name)
    try:
        try:
            handle = _open(temp, mode, encoding, newline)
        except FileNotFoundError:
            folder.mkdir(parents=True, exist_ok=True)
            handle = _open(temp, mode, encoding, newline)
        with handle:
            yield handle
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        _rename_into_place(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(
    path: Path, data: bytes | memoryview | Sequence[bytes | memoryview], *, fsync: bool = False,
    temp_dir: Path | None = None,
) -> None:
    """Write *data* (bytes, or a sequence of parts written one after another) to *path* atomically.

    As :func:`atomic_write`, with the file handled at the OS level: the temp
    file is created exclusively, the parts go out in one ``writev`` and there
    is no buffered file object (whose open costs three more system calls).
    It runs for every instance the Storage SCP receives.
    """
    parts = [data] if isinstance(data, (bytes, bytearray, memoryview)) else list(data)
    folder = temp_dir if temp_dir is not None else path.parent
    temp = folder / temp_name(path.name)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    try:
        try:
            fd = os.open(temp, flags, 0o666)
        except FileNotFoundError:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(temp, flags, 0o666)
        try:
            _write_all(fd, parts)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        _rename_into_place(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _rename_into_place(temp: Path, path: Path) -> None:
    """Rename the finished temp file to *path*, creating *path*'s folders only if they are missing."""
    try:
        os.replace(temp, path)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(temp, path)


def _write_all(fd: int, parts: Sequence[bytes | bytearray | memoryview]) -> None:
    """Write every part to *fd*, in order, going on after a short write."""
    views = [memoryview(part).cast("B") for part in parts if len(part)]
    while views:
        written = os.writev(fd, views)
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]
