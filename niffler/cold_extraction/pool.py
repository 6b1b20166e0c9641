"""The worker pool: N threads, each with its own PACS session, serving rows from a bounded queue.

The queue is bounded (twice the workers), so a CSV of any length is planned
lazily. Ctrl-C (or SIGTERM, which the command turns into one) stops the
pool: every session is aborted, queued rows are dropped (they stay pending
in the ledger), and workers are given a short grace to notice.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence

from niffler.cold_extraction.plan import Query
from niffler.cold_extraction.retrieve import Session

__all__ = ["Jobs", "WorkerPool"]

log = logging.getLogger(__name__)

#: Seconds the pool waits for workers after Ctrl-C before it lets them go.
_STOP_GRACE = 3.0


class Jobs:
    """The rows waiting for a worker; ``None`` tells a worker there are no more."""

    def __init__(self, size: int, stop: threading.Event) -> None:
        self._queue: queue.Queue[Query | None] = queue.Queue(maxsize=size)
        self._stop = stop

    def put(self, item: Query | None) -> None:
        """Queue *item*, waiting for room unless the run stops."""
        while True:
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                if self._stop.is_set():
                    return

    def get(self) -> Query | None:
        return self._queue.get()

    def empty(self) -> bool:
        return self._queue.empty()

    def abandon(self, workers: int) -> None:
        """Drop every queued row and tell *workers* workers to end."""
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()
        for _ in range(workers):
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(None)


#: A worker's loop: serve rows from the jobs with one session until it gets None.
Work = Callable[[Session, Jobs], None]


class WorkerPool:
    """Run *work* on one thread per session; :meth:`run` feeds them and waits."""

    def __init__(self, sessions: Sequence[Session], work: Work, stop: threading.Event) -> None:
        self.sessions = list(sessions)
        self.work = work
        self.stop = stop
        self.jobs = Jobs(2 * len(self.sessions), stop)

    def _worker(self, session: Session) -> None:
        try:
            self.work(session, self.jobs)
        finally:
            session.close()

    def run(self, feed: Callable[[Callable[[Query], None]], None]) -> bool:
        """Start the workers, call *feed* with the queue's put, wait for them; return True if interrupted."""
        threads = [
            threading.Thread(target=self._worker, args=(s,), name=f"cold-{i}", daemon=True)
            for i, s in enumerate(self.sessions)
        ]
        for thread in threads:
            thread.start()
        try:
            feed(self.jobs.put)
            for _ in threads:
                self.jobs.put(None)
            for thread in threads:
                while thread.is_alive():
                    thread.join(0.2)
        except KeyboardInterrupt:
            log.warning("interrupted: stopping; rows not finished stay pending for the next run")
            self.stop.set()
            for session in self.sessions:
                session.drop()
            self.jobs.abandon(len(threads))
            # A worker blocked in a transfer the abort cut short waits out its DIMSE
            # timeout; it marks nothing once stopped, so it is not waited for long.
            grace = time.monotonic() + _STOP_GRACE
            for thread in threads:
                thread.join(max(0.0, grace - time.monotonic()))
            return True
        return False
