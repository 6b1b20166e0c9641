"""Retries with doubling delays, and the stop every wait of a run listens to."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from niffler.net.scu import RetrievalFailed

__all__ = ["PermanentFailure", "Retrier", "Stopped"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class Stopped(Exception):
    """The run is stopping (Ctrl-C, SIGTERM, a full disk): leave the row pending."""


class PermanentFailure(RetrievalFailed):
    """An attempt failed in a way a retry can not fix (an HTTP 4xx: unauthorized, not found): not retried."""


class Retrier:
    """Run a request, retrying a :class:`RetrievalFailed` *retries* times, *delay* doubling each time.

    A :class:`PermanentFailure` is raised at once.

    Every wait ends early when *stop* is set, raising :class:`Stopped`.
    """

    def __init__(self, retries: int, delay: float, stop: threading.Event) -> None:
        self.retries = retries
        self.delay = delay
        self.stop = stop

    def __call__(self, line: int, call: Callable[[], T]) -> T:
        """Return *call*'s result; raise its last RetrievalFailed, or Stopped. *line* is for the log."""
        for attempt in range(self.retries + 1):
            if self.stop.is_set():
                raise Stopped
            try:
                return call()
            except PermanentFailure:
                raise
            except RetrievalFailed as exc:
                if self.stop.is_set():
                    raise Stopped from None
                if attempt == self.retries:
                    if self.retries:
                        raise RetrievalFailed(f"{exc} (after {self.retries + 1} attempts)") from None
                    raise
                delay = self.delay * 2**attempt
                log.warning(
                    "line %d: %s; retry %d of %d in %.1f s", line, exc, attempt + 1, self.retries, delay
                )
                if self.stop.wait(delay):
                    raise Stopped from None
        raise AssertionError("unreachable")
