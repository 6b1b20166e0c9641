"""A converter whose worker process dies on chosen files, as a crash in a codec would kill it.

niffler-png must list such a file as ``worker-crash`` and finish the rest,
never stop or crash-loop on it. Used by the tests only; the spawned workers
import it by name.
"""

from __future__ import annotations

import os

from niffler.png_extraction.pipeline import Converter, FileResult

__all__ = ["CrashingConverter"]


class CrashingConverter(Converter):
    """Kills its process (no exception, no clean-up) when a file's name contains ``crash``."""

    def convert_batch(self, relpaths: list[str]) -> list[FileResult]:
        if any("crash" in os.path.basename(p) for p in relpaths):
            os._exit(70)
        return super().convert_batch(relpaths)
