"""Rows, studies, instances and MB/s of a run: a bar on a terminal, a log line every 10 s otherwise."""

from __future__ import annotations

import logging
import sys
import threading
import time
from dataclasses import dataclass, field

from tqdm import tqdm

from niffler.cold_extraction.fetch import Tally
from niffler.cold_extraction.retrieve import Receipts

__all__ = ["Progress"]

log = logging.getLogger(__name__)

_LOG_EVERY = 10.0


@dataclass
class Progress:
    """Counts rows as they finish; instances are the distinct ones of finished targets (:class:`Tally`)."""

    total: int
    receipts: Receipts
    tally: Tally
    show: bool
    started: float = field(default_factory=time.monotonic)
    rows: int = 0
    studies: int = 0
    _next_log: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._bar = tqdm(total=self.total, unit="row", disable=not self.show, file=sys.stderr)
        self._next_log = self.started + _LOG_EVERY

    def advance(self, rows: int = 1, studies: int = 0) -> None:
        with self._lock:
            self.rows += rows
            self.studies += studies
            elapsed = max(time.monotonic() - self.started, 1e-9)
            rate = self.receipts.bytes / 1e6 / elapsed
            if not self._bar.disable:
                self._bar.set_postfix(
                    studies=self.studies, instances=self.tally.total, MBps=f"{rate:.1f}", refresh=False
                )
                self._bar.update(rows)
            elif time.monotonic() >= self._next_log:
                self._next_log = time.monotonic() + _LOG_EVERY
                log.info(
                    "rows %d/%d, studies %d, instances %d, %.1f MB/s",
                    self.rows, self.total, self.studies, self.tally.total, rate,
                )  # fmt: skip

    def close(self) -> None:
        self._bar.close()
