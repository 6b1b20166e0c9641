"""The nightly purge: delete images of series that are extracted and quiet, nothing else."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from niffler.meta_extraction.index import InstanceIndex

__all__ = ["PurgeResult", "purge"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PurgeResult:
    files: int
    bytes: int
    folders: int
    skipped: int


def purge(index: InstanceIndex, storage_folder: Path, quiet_before: float) -> PurgeResult:
    """Delete the files of fully extracted series that received nothing since *quiet_before*.

    A file rewritten after the index recorded it (a resend landing on the
    same path) is left for the next run: its new content is not extracted
    yet. Folders emptied by the purge are removed, never the storage folder.
    """
    files = size = skipped = 0
    purged: list[str] = []
    parents: set[Path] = set()
    for sop_key, relative, mtime_ns in index.purgeable(quiet_before):
        path = storage_folder / relative
        try:
            stat = path.stat()
        except FileNotFoundError:
            purged.append(sop_key)
            continue
        if stat.st_mtime_ns != mtime_ns:
            skipped += 1
            continue
        try:
            path.unlink()
        except OSError as exc:
            log.error("purge: cannot delete instance %s: %s", sop_key, exc.strerror or type(exc).__name__)
            skipped += 1
            continue
        purged.append(sop_key)
        files += 1
        size += stat.st_size
        parents.add(path.parent)
    index.mark(purged, "purged")
    folders = _remove_empty(parents, storage_folder)
    result = PurgeResult(files=files, bytes=size, folders=folders, skipped=skipped)
    log.info(
        "purge: deleted %d files (%.1f MB) and %d empty folders; %d left for later",
        files, size / 1e6, folders, skipped,
    )  # fmt: skip
    return result


def _remove_empty(folders: set[Path], root: Path) -> int:
    removed = 0
    root = root.resolve()
    # Deepest first, so a parent is tried after its children.
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        current = folder.resolve()
        while current != root and root in current.parents:
            try:
                os.rmdir(current)
            except OSError:
                break  # not empty (or already gone): stop climbing
            removed += 1
            current = current.parent
    return removed
