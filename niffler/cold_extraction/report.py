"""What a run reports: the summary, ``retrieval-report.csv`` and ``cfind-output.csv``.

The report lists every CSV row as a :class:`ReportRow`, rebuilt from the CSV
and the progress ledger, so it is the same whether the run finished, failed
or was interrupted. Both files are written with
:func:`~niffler.common.atomic.atomic_write`: an error while writing leaves
the previous file whole and no ``.part`` behind. Both hold the identifiers
the user asked for: they belong with the retrieved files, not in a shared
place. The summary holds counts only.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from niffler.cold_extraction.plan import Query, RowError
from niffler.common.atomic import atomic_write
from niffler.common.ledger import Entry, State

__all__ = ["CFIND_OUTPUT", "REPORT_NAME", "ReportRow", "Summary", "report_rows", "write_outputs"]

REPORT_NAME = "retrieval-report.csv"
CFIND_OUTPUT = "cfind-output.csv"


@dataclass(frozen=True)
class ReportRow:
    """One line of retrieval-report.csv: a CSV row and what became of it. None is written blank.

    *status*: done, failed, invalid, duplicate, not-finished (pending when the
    run stopped) or not-attempted. *level*: SERIES, PATIENT, STUDY or FIND
    (:attr:`~niffler.cold_extraction.plan.Query.level`). *studies*: distinct
    studies the row resolved to (for a SERIES-level row, the studies its series
    are in). *series*: how many series a SERIES-level row resolved to; blank
    for a study-level row, which retrieves whole studies. *instances_expected*:
    the sum of the counts C-FIND reported, blank when the PACS did not report
    one for every study (series). *instances_received*: distinct instances
    that arrived for the row, also when it failed.
    """

    line: int
    status: str
    level: str = ""
    query: str = ""
    studies: int | None = None
    series: int | None = None
    instances_expected: int | None = None
    instances_received: int | None = None
    attempts: int | None = None
    error: str = ""

    @classmethod
    def columns(cls) -> tuple[str, ...]:
        """The report's header: the field names, in order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    def cells(self) -> list[str]:
        """The row as CSV cells, None as blank."""
        return ["" if value is None else str(value) for value in dataclasses.astuple(self)]

    @classmethod
    def of(cls, query: Query, entry: Entry | None) -> ReportRow:
        """The report line of a planned row from its ledger entry (None: never attempted)."""
        text = json.dumps(query.identifiers, sort_keys=True)
        if entry is None:
            return cls(query.line, "not-attempted", query.level, text, attempts=0)
        detail = entry.detail
        return cls(
            line=query.line,
            status="not-finished" if entry.state is State.PENDING else entry.state.value,
            level=query.level,
            query=text,
            studies=_int(detail.get("studies")),
            series=_int(detail.get("series")),
            instances_expected=_int(detail.get("expected")),
            instances_received=_int(detail.get("received")),
            attempts=entry.attempts,
            error=entry.last_error or "",
        )


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def report_rows(
    items: Iterable[Query | RowError], lookup: Callable[[str], Entry | None]
) -> Iterator[tuple[ReportRow, Entry | None]]:
    """Each planned row's report line and ledger entry (None: invalid, duplicate, never attempted)."""
    first_line: dict[str, int] = {}
    for item in items:
        if isinstance(item, RowError):
            yield ReportRow(item.line, "invalid", error=item.message), None
            continue
        if item.key in first_line:
            text = json.dumps(item.identifiers, sort_keys=True)
            yield (
                ReportRow(
                    item.line,
                    "duplicate",
                    item.level,
                    text,
                    error=f"same query as line {first_line[item.key]}",
                ),
                None,
            )
            continue
        first_line[item.key] = item.line
        entry = lookup(item.key)
        yield ReportRow.of(item, entry), entry


def write_outputs(
    report: Path,
    rows: Iterable[tuple[ReportRow, Entry | None]],
    cfind_output: Path | None = None,
    cfind_keys: Sequence[str] = (),
) -> None:
    """Write the report, and with *cfind_output* the matches of done rows (one line per study), atomically.

    On any error neither file is replaced and no temp file is left.
    """
    with atomic_write(report) as report_handle:
        writer = csv.writer(report_handle)
        writer.writerow(ReportRow.columns())
        if cfind_output is None:
            for row, _ in rows:
                writer.writerow(row.cells())
            return
        with atomic_write(cfind_output) as output_handle:
            matches = csv.writer(output_handle)
            matches.writerow(cfind_keys)
            written: set[str] = set()
            for row, entry in rows:
                writer.writerow(row.cells())
                if entry is None or entry.state is not State.DONE:
                    continue
                for match in entry.detail.get("matches", []):
                    uid = match.get("StudyInstanceUID", "")
                    if uid not in written:
                        written.add(uid)
                        matches.writerow([match.get(k, "") for k in cfind_keys])


@dataclass
class Summary:
    """What a run did, in counts (no identifiers). :meth:`add` is safe from any worker."""

    mode: str
    report: Path
    #: What the transfers are called in :meth:`describe`; empty: C-MOVE or C-GET by the mode.
    transfer_verb: str = ""
    rows: int = 0
    retrieved: int = 0
    done_before: int = 0
    failed: int = 0
    invalid: int = 0
    duplicates: int = 0
    studies: int = 0
    #: Series of SERIES-level rows.
    series: int = 0
    #: C-MOVE / C-GET requests sent, each for one study or series or a list of them.
    transfers: int = 0
    #: Distinct instances retrieved in this run (an instance sent twice counts once).
    instances: int = 0
    #: Bytes received, re-deliveries included (the throughput, not the size of the result).
    bytes: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    #: The run stopped because the storage folder's disk was full.
    disk_full: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **changes: int) -> None:
        """Add to counters, e.g. ``add(failed=1)``."""
        with self._lock:
            for name, value in changes.items():
                setattr(self, name, getattr(self, name) + value)

    def mark_disk_full(self) -> bool:
        """Set :attr:`disk_full`; return whether it was not set yet."""
        with self._lock:
            first = not self.disk_full
            self.disk_full = True
            return first

    @property
    def ok(self) -> bool:
        return not (self.failed or self.invalid or self.interrupted or self.disk_full)

    def _in_transfers(self) -> str:
        if self.mode.startswith("cfind"):
            return ""
        verb = self.transfer_verb or ("C-GET" if self.mode == "get" else "C-MOVE")
        return f" in {self.transfers} {verb}(s)"

    def describe(self) -> str:
        what = "matched" if self.mode.startswith("cfind") else "retrieved"
        rate = self.bytes / 1e6 / self.seconds if self.seconds else 0.0
        series = f", {self.series} series" if self.series else ""
        return (
            f"{self.rows} row(s): {self.retrieved} {what}, {self.failed} failed, {self.invalid} invalid, "
            f"{self.duplicates} duplicate, {self.done_before} done earlier"
            f"{' (interrupted)' if self.interrupted else ''}"
            f"{' (stopped: the storage disk is full)' if self.disk_full else ''}; {self.studies} stud(ies)"
            f"{series}{self._in_transfers()}, {self.instances} instance(s), "
            f"{self.bytes / 1e6:.1f} MB received in {self.seconds:.1f} s "
            f"({rate:.1f} MB/s)"
        )
