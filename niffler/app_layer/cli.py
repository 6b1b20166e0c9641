"""Console entry point of niffler-scanner-util: scanner reports from the metadata store."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import pandas as pd
from pymongo.collection import Collection
from pymongo.errors import PyMongoError

from niffler.app_layer.config import AppConfig
from niffler.app_layer.pipelines import validate_day
from niffler.app_layer.reports import (
    Report,
    clock_report,
    ensure_indexes,
    load_scanner_subset,
    scanners_report,
    study_times_report,
    utilization_report,
    write_report,
)
from niffler.common.cli import (
    EXIT_CODES_HELP,
    NifflerGroup,
    fail_cleanly,
    logging_options,
    setup_logging,
    sigterm_interrupts,
)
from niffler.common.config import load_config, log_config
from niffler.common.errors import InputError, StoreUnavailable
from niffler.common.store import Store, attach_store, open_store, resolve_uri

__all__ = ["main"]

_TERMINAL_ROWS = 40


@contextlib.contextmanager
def _store(config: AppConfig) -> Iterator[Store]:
    """Open the store by URI, join the embedded one niffler-meta runs, or open its folder ourselves."""
    uri = resolve_uri(config.MongoURI or None)
    store = open_store(uri, database=config.DatabaseName) if uri else None  # pings: a clear error if down
    if store is None:
        store = attach_store(None, database=config.DatabaseName, data_dir=config.EmbeddedStoreFolder)
    if store is None:
        if not config.EmbeddedStoreFolder.is_dir():
            raise StoreUnavailable(
                f"no metadata store: set MongoURI (or $NIFFLER_MONGO_URI), or point EmbeddedStoreFolder at "
                f"niffler-meta's StateFolder/store ({str(config.EmbeddedStoreFolder)!r} does not exist)"
            )
        store = open_store(None, database=config.DatabaseName, data_dir=config.EmbeddedStoreFolder)
    try:
        yield store
    except PyMongoError as exc:
        raise StoreUnavailable(f"the metadata store failed during the report: {type(exc).__name__}") from None
    finally:
        store.close()


@contextlib.contextmanager
def _indexed_collection(config: AppConfig) -> Iterator[Collection[dict[str, Any]]]:
    """Yield the featureset collection the reports read, with the indexes their pipelines use."""
    with _store(config) as store:
        collection = store.db[config.Collection]
        ensure_indexes(collection)
        yield collection


def _range(date: str | None, date_from: str | None, date_to: str | None, required: bool) -> tuple[str, str]:
    if date and (date_from or date_to):
        raise InputError("give --date, or --from and --to, not both")
    if date:
        day = validate_day(date, "--date")
        return day, day
    if required and not (date_from and date_to):
        raise InputError("give --date YYYYMMDD, or --from YYYYMMDD --to YYYYMMDD")
    first = validate_day(date_from, "--from") if date_from else ""
    last = validate_day(date_to, "--to") if date_to else ""
    if first and last and first > last:
        raise InputError(f"--from {first} is after --to {last}")
    return first, last


def _show(report: Report, written: list[Path]) -> None:
    table = report.main
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.max_colwidth", 40):
        click.echo(table.head(_TERMINAL_ROWS).to_string(index=False) if not table.empty else "(no rows)")
    if len(table) > _TERMINAL_ROWS:
        click.echo(f"... {len(table) - _TERMINAL_ROWS} more rows in {written[0]}")
    for note in report.notes:
        click.echo(note, err=True)
    for path in written:
        click.echo(f"wrote {path}", err=True)


def _report_options(func: Callable[..., Any]) -> Callable[..., Any]:
    for decorator in reversed((
        click.option("--from", "date_from", metavar="YYYYMMDD", help="first StudyDate"),
        click.option("--to", "date_to", metavar="YYYYMMDD", help="last StudyDate"),
        click.option("--scanners", "scanner_file", type=click.Path(dir_okay=False, exists=True),
                     help="file of DeviceSerialNumbers to report on (overrides ScannerSubsetFile)"),
        click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
                     help="CSV to write (default: <report>.csv here)"),
    )):  # fmt: skip
        func = decorator(func)
    return func


def _scanners(config: AppConfig, scanner_file: str | None) -> list[str]:
    source = scanner_file or config.ScannerSubsetFile
    return load_scanner_subset(source) if source else []


@click.group(cls=NifflerGroup, epilog=EXIT_CODES_HELP)
@click.option("--config", "config_path", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="JSON config, e.g. configs/app_layer.json")  # fmt: skip
@click.option("--mongo-uri", help="mongodb:// URI of the store (overrides MongoURI)")
@logging_options("niffler-scanner-util")
@click.pass_context
@fail_cleanly
def main(
    ctx: click.Context, config_path: Path | None, mongo_uri: str | None, verbose: int, quiet: int
) -> None:
    """Scanner reports from niffler-meta's metadata store: CSV, a terminal table and plots."""
    setup_logging(verbose, quiet)
    # Until the report command ends, SIGTERM stops it as Ctrl-C does: exit 130, no partial file.
    ctx.with_resource(sigterm_interrupts())
    config = load_config(AppConfig, [config_path] if config_path else [], {"MongoURI": mongo_uri})
    log_config(config)
    ctx.obj = config


@main.command()
@click.option("--date", metavar="YYYYMMDD", help="one StudyDate")
@_report_options
@click.option(
    "--gap", type=click.FloatRange(0), help="encounter merge gap in minutes (overrides EncounterGapMinutes)"
)
@click.option(
    "--modality", "modalities", multiple=True, help="modality to count (repeatable; overrides Modalities)"
)
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), help="timeline plot, .png or .html")
@click.pass_obj
@fail_cleanly
def utilization(config: AppConfig, date: str | None, date_from: str | None, date_to: str | None,
                scanner_file: str | None, out: Path | None, gap: float | None,
                modalities: tuple[str, ...], plot: Path | None) -> None:  # fmt: skip
    """Per scanner per day: utilization %, patients, encounters, studies, series, idle gaps."""
    first, last = _range(date, date_from, date_to, required=True)
    with _indexed_collection(config) as collection:
        report = utilization_report(
            collection, first, last,
            gap_minutes=config.EncounterGapMinutes if gap is None else gap,
            modalities=list(modalities) or config.Modalities,
            scanners=_scanners(config, scanner_file),
            plot=plot is not None,
        )  # fmt: skip
    _show(report, write_report(report, out or Path("utilization.csv"), plot))


@main.command("clock-skew")
@_report_options
@click.option("--threshold", type=click.FloatRange(0), help="hours (overrides SkewThresholdHours)")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), help="skew chart, .png or .html")
@click.pass_obj
@fail_cleanly
def clock_skew(config: AppConfig, date_from: str | None, date_to: str | None, scanner_file: str | None,
               out: Path | None, threshold: float | None, plot: Path | None) -> None:  # fmt: skip
    """Per scanner: skew between acquisition and arrival (hours); misconfigured clocks flagged."""
    first, last = _range(None, date_from, date_to, required=False)
    with _indexed_collection(config) as collection:
        report = clock_report(
            collection, first or None, last or None,
            threshold_hours=config.SkewThresholdHours if threshold is None else threshold,
            timezone=config.SiteTimezone,
            scanners=_scanners(config, scanner_file),
            plot=plot is not None,
        )  # fmt: skip
    _show(report, write_report(report, out or Path("clock-skew.csv"), plot))


@main.command()
@_report_options
@click.pass_obj
@fail_cleanly
def scanners(config: AppConfig, date_from: str | None, date_to: str | None, scanner_file: str | None,
             out: Path | None) -> None:  # fmt: skip
    """The unique scanners seen, with first and last acquisition and arrival."""
    first, last = _range(None, date_from, date_to, required=False)
    with _store(config) as store:
        report = scanners_report(store.db[config.Collection], first or None, last or None,
                                 scanners=_scanners(config, scanner_file))  # fmt: skip
    _show(report, write_report(report, out or Path("scanners.csv")))


@main.command("study-times")
@_report_options
@click.pass_obj
@fail_cleanly
def study_times(config: AppConfig, date_from: str | None, date_to: str | None, scanner_file: str | None,
                out: Path | None) -> None:  # fmt: skip
    """Per study: earliest and latest acquisition date-time."""
    first, last = _range(None, date_from, date_to, required=False)
    with _indexed_collection(config) as collection:
        report = study_times_report(collection, first or None, last or None,
                                    scanners=_scanners(config, scanner_file))  # fmt: skip
    _show(report, write_report(report, out or Path("study-times.csv")))
