"""What a worker does with its rows: resolve each, retrieve their targets together, record each row.

A worker resolves rows (:func:`~niffler.cold_extraction.resolve.resolve`)
while more are queued and their targets are fewer than ``StudiesPerMove``,
so one C-MOVE can fetch several rows' studies; then the
:class:`~niffler.cold_extraction.fetch.Fetcher` retrieves them and each row
is marked in the ledger: done only when every one of its targets is. A row's
detail holds what the report shows: studies, series, the expected count
(None unless the PACS reported one for every target) and the distinct
instances that arrived, also for a row that failed. In the query-only modes
a row is done once resolved. No row's failure ends the run; logs name lines
and counts only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from niffler.cold_extraction.fetch import Fetcher, Outcome
from niffler.cold_extraction.plan import Query
from niffler.cold_extraction.pool import Jobs
from niffler.cold_extraction.progress import Progress
from niffler.cold_extraction.report import Summary
from niffler.cold_extraction.resolve import Resolved, resolve
from niffler.cold_extraction.retrieve import RetrievalFailed, Session
from niffler.cold_extraction.retry import Retrier, Stopped
from niffler.common.ledger import Ledger

__all__ = ["RowWorker", "row_detail"]

log = logging.getLogger(__name__)


def row_detail(row: Resolved, outcomes: dict[tuple[str, str], Outcome]) -> tuple[dict[str, Any], list[str]]:
    """A retrieved row's ledger detail (its report counts) and its targets' errors, from their outcomes."""
    expected = [t.expected for t in row.targets]
    detail: dict[str, Any] = {
        "line": row.query.line,
        "studies": row.studies,
        "series": row.series,
        "expected": sum(e for e in expected if e is not None) if None not in expected else None,
        "received": sum(outcomes[t.key].received for t in row.targets),
    }
    errors = [error for t in row.targets if (error := outcomes[t.key].error)]
    return detail, errors


class RowWorker:
    """The loop each worker of the pool runs (see the module's docstring)."""

    def __init__(
        self,
        *,
        mode: str,
        namespace: str,
        return_keys: Sequence[str],
        ledger: Ledger,
        summary: Summary,
        retrier: Retrier,
        fetcher: Fetcher,
        progress: Progress,
        per_move: int,
        wait_for_window: Callable[[], None],
    ) -> None:
        self.mode = mode
        self.namespace = namespace
        self.return_keys = tuple(return_keys)
        self.ledger = ledger
        self.summary = summary
        self.retrier = retrier
        self.stop = retrier.stop
        self.fetcher = fetcher
        self.progress = progress
        self.per_move = per_move
        self.wait_for_window = wait_for_window

    def __call__(self, session: Session, jobs: Jobs) -> None:
        """Serve rows until the end marker."""
        waiting: list[Resolved] = []
        while (query := jobs.get()) is not None:
            if not self.stop.is_set():
                resolved = self._resolve(session, query)
                if resolved is not None:
                    waiting.append(resolved)
            pending = sum(len(r.targets) for r in waiting)
            if waiting and (pending >= self.per_move or jobs.empty()):
                self._retrieve(session, waiting)
                waiting = []
        if waiting:
            self._retrieve(session, waiting)

    def _failed(self, query: Query, error: str, detail: dict[str, Any]) -> None:
        self.ledger.mark_failed(self.namespace, query.key, error, detail)
        self.summary.add(failed=1)
        log.warning("line %d failed: %s", query.line, error)
        self.progress.advance()

    def _resolve(self, session: Session, query: Query) -> Resolved | None:
        """C-FIND one row; finish it unless targets remain to retrieve (then return them)."""
        detail: dict[str, Any] = {"line": query.line}
        query_only = self.mode.startswith("cfind")
        try:
            self.wait_for_window()
            resolved = resolve(
                session,
                query,
                self.return_keys,
                lambda call: self.retrier(query.line, call),
                describe_studies=query_only,
            )
        except Stopped:
            return None
        except RetrievalFailed as exc:
            self._failed(query, str(exc), detail)
            return None
        except Exception:  # one row must never end the run
            log.exception("line %d: unexpected error", query.line)
            self._failed(query, "unexpected error (see the log)", detail)
            return None
        detail.update(studies=resolved.studies, series=resolved.series)
        if query_only:
            self.ledger.mark_done(self.namespace, query.key, {**detail, "matches": resolved.matches})
            self.summary.add(retrieved=1, studies=resolved.studies, series=resolved.series or 0)
            self.progress.advance(studies=resolved.studies)
            return None
        if not resolved.targets:
            self._failed(query, f"no {'series' if query.series_level else 'study'} matched the query", detail)
            return None
        return resolved

    def _retrieve(self, session: Session, rows: list[Resolved]) -> None:
        """Retrieve the targets of resolved rows, then finish each row; rows stay pending on stop."""
        try:
            outcomes = self.fetcher.fetch(session, rows)
        except Stopped:
            return
        except Exception:  # one batch must never end the run
            log.exception("lines %s: unexpected error", ", ".join(str(r.query.line) for r in rows))
            for row in rows:
                self._failed(row.query, "unexpected error (see the log)", {"line": row.query.line})
            return
        for row in rows:
            detail, errors = row_detail(row, outcomes)
            self.summary.add(studies=row.studies, series=row.series or 0)
            if errors:
                what = "series" if row.query.series_level else "stud(ies)"
                self._failed(
                    row.query,
                    f"{len(errors)} of {len(row.targets)} {what} not retrieved; first: {errors[0]}",
                    detail,
                )
            else:
                self.ledger.mark_done(self.namespace, row.query.key, detail)
                self.summary.add(retrieved=1)
                self.progress.advance(studies=row.studies)
