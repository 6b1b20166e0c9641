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
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["NAME_MAX", "atomic_write", "temp_name", "write_bytes_atomic"]

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
        try:
            os.replace(temp, path)
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: Path, data: bytes, *, fsync: bool = False, temp_dir: Path | None = None) -> None:
    """Write *data* to *path* atomically (see :func:`atomic_write`)."""
    with atomic_write(path, "wb", fsync=fsync, temp_dir=temp_dir) as handle:
        handle.write(data)
