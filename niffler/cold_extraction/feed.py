"""Feeding rows: the planned CSV -> the rows the workers still have to serve.

Invalid rows, repeats of an earlier row's query and rows done in an earlier
run (ledger) are counted here and never reach a worker. Logs name the line,
never a cell.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from niffler.cold_extraction.plan import Query, RowError
from niffler.cold_extraction.progress import Progress
from niffler.cold_extraction.report import Summary
from niffler.common.ledger import Ledger, State

__all__ = ["feed_rows"]

log = logging.getLogger(__name__)


def feed_rows(
    items: Iterable[Query | RowError],
    put: Callable[[Query], None],
    *,
    ledger: Ledger,
    namespace: str,
    summary: Summary,
    progress: Progress,
) -> None:
    """Hand each row still to serve to *put*, in CSV order; count the others in *summary*."""
    seen: set[str] = set()
    for item in items:
        summary.add(rows=1)
        if isinstance(item, RowError):
            summary.add(invalid=1)
            log.warning("line %d skipped: %s", item.line, item.message)
            progress.advance()
        elif item.key in seen:
            summary.add(duplicates=1)
            log.info("line %d repeats an earlier row's query: served once", item.line)
            progress.advance()
        else:
            seen.add(item.key)
            entry = ledger.get(namespace, item.key)
            if entry is not None and entry.state is State.DONE:
                summary.add(done_before=1)
                progress.advance()
            else:
                put(item)
