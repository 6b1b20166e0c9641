"""The four reports: a store query (aggregation pipeline), pure pandas logic, then tables and a figure.

Each report returns a :class:`Report`: named tables (the first is the main
one) and, on request, a figure. Writing them (CSV, terminal, plot) is
:func:`write_report`.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure
from pymongo.collection import Collection
from pymongo.errors import PyMongoError

from niffler.app_layer.clock import scanner_skew, site_timezone, study_skews
from niffler.app_layer.pipelines import fetch_clock_studies, fetch_scanners, fetch_studies, series_filter
from niffler.app_layer.utilization import encounters, idle_gaps, scanner_days
from niffler.common.atomic import atomic_write
from niffler.common.errors import InputError
from niffler.common.summary import has_documents, summary_collection

__all__ = [
    "Report",
    "clock_report",
    "ensure_indexes",
    "load_scanner_subset",
    "scanners_report",
    "study_times_report",
    "utilization_report",
    "write_report",
]

log = logging.getLogger(__name__)


@dataclass
class Report:
    """A report's tables (name -> DataFrame, the main one first) and its figure, if asked for."""

    name: str
    tables: dict[str, pd.DataFrame]
    figure: Figure | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def main(self) -> pd.DataFrame:
        return next(iter(self.tables.values()))


def ensure_indexes(collection: Collection[dict[str, Any]]) -> None:
    """Create the StudyDate indexes the reports' filters use (idempotent; a read-only user just logs)."""
    try:
        collection.create_index("StudyDate")
        summary = summary_collection(collection)
        if has_documents(summary):
            summary.create_index("StudyDate")
    except PyMongoError as exc:
        log.info("could not create the StudyDate index (%s); reports will scan the collection", exc)


def load_scanner_subset(path: str | Path) -> list[str]:
    """Read DeviceSerialNumbers: one per line, or the first column of a CSV (a header row is skipped)."""
    file = Path(path)
    try:
        with open(file, newline="", encoding="utf-8") as handle:
            cells = [row[0].strip() for row in csv.reader(handle) if row and row[0].strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the scanner subset file {file}: {exc}") from None
    if cells and cells[0].lower() in ("deviceserialnumber", "serial", "scanner"):
        cells = cells[1:]
    if not cells:
        raise InputError(f"scanner subset file {file} lists no scanner")
    return cells


def utilization_report(
    collection: Collection[dict[str, Any]],
    date_from: str,
    date_to: str,
    *,
    gap_minutes: float = 20.0,
    modalities: Sequence[str] = (),
    scanners: Sequence[str] = (),
    plot: bool = False,
) -> Report:
    """Utilization per scanner per day, the encounters, and the idle gaps."""
    match = series_filter(date_from, date_to, modalities, scanners, original_only=True)
    studies = fetch_studies(collection, match)
    table = encounters(studies, gap_minutes)
    days = scanner_days(table)
    gaps = idle_gaps(table)
    report = Report("utilization", {"utilization": days, "encounters": table, "idle-gaps": gaps})
    report.notes.append(f"{len(studies)} studies, {len(table)} encounters, {len(days)} scanner-days")
    if plot:
        from niffler.app_layer.plots import utilization_figure

        report.figure = utilization_figure(days, table, gaps)
    return report


def clock_report(
    collection: Collection[dict[str, Any]],
    date_from: str | None,
    date_to: str | None,
    *,
    threshold_hours: float = 1.0,
    timezone: str = "",
    scanners: Sequence[str] = (),
    plot: bool = False,
) -> Report:
    """Clock skew per scanner, flagged beyond the threshold; the per-study skews as a second table."""
    zone = site_timezone(timezone)
    studies, source = fetch_clock_studies(collection, date_from, date_to, scanners)
    skews = study_skews(studies, zone) if not studies.empty else studies.assign(skew_hours=[])
    per_scanner = scanner_skew(skews, threshold_hours)
    report = Report("clock-skew", {"clock-skew": per_scanner, "studies": skews})
    flagged = int(per_scanner["misconfigured"].sum()) if not per_scanner.empty else 0
    report.notes.append(
        f"{len(skews)} studies, {len(per_scanner)} scanners, {flagged} flagged (site time zone {zone}); "
        f"read from {source}"
    )
    if plot:
        from niffler.app_layer.plots import skew_figure

        report.figure = skew_figure(per_scanner, threshold_hours)
    return report


def scanners_report(
    collection: Collection[dict[str, Any]],
    date_from: str | None,
    date_to: str | None,
    *,
    scanners: Sequence[str] = (),
) -> Report:
    """The unique scanners seen, with first and last acquisition and arrival, and series counts."""
    table = fetch_scanners(collection, series_filter(date_from, date_to, (), scanners))
    return Report("scanners", {"scanners": table}, notes=[f"{len(table)} scanners"])


def study_times_report(
    collection: Collection[dict[str, Any]],
    date_from: str | None,
    date_to: str | None,
    *,
    modalities: Sequence[str] = (),
    scanners: Sequence[str] = (),
) -> Report:
    """Per study: earliest and latest acquisition date-time, scanner, modality, series."""
    studies = fetch_studies(collection, series_filter(date_from, date_to, modalities, scanners))
    table = studies.rename(columns={"start": "earliest_acquisition", "end": "latest_acquisition"})
    return Report("study-times", {"study-times": table}, notes=[f"{len(table)} studies"])


def write_report(report: Report, out: Path, plot: Path | None = None) -> list[Path]:
    """Write the main table to *out* and the others next to it (``<stem>-<name>.csv``); then the plot."""
    written: list[Path] = []
    for index, (name, table) in enumerate(report.tables.items()):
        path = out if index == 0 else out.with_name(f"{out.stem}-{name}{out.suffix or '.csv'}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(path) as handle:  # an interrupted run leaves the old file or none, never a part
                table.to_csv(handle, index=False, date_format="%Y-%m-%d %H:%M:%S")
        except OSError as exc:
            raise InputError(f"cannot write {path}: {exc.strerror}") from None
        written.append(path)
    if plot is not None:
        if report.figure is None:
            raise InputError(f"the {report.name} report has no plot")
        from niffler.app_layer.plots import save_figure

        save_figure(report.figure, plot, f"Niffler {report.name}", report.main)
        written.append(plot)
    return written
