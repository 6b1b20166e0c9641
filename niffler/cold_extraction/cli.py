"""Console entry point of niffler-cold: retrieve the studies (or series) a CSV names from the PACS."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from niffler.cold_extraction.config import MODES, QUERY_ONLY_MODES, TRANSPORTS, ColdConfig
from niffler.cold_extraction.plan import Query, read_plan
from niffler.cold_extraction.retrieve import echo
from niffler.cold_extraction.run import ColdRun
from niffler.common.cli import (
    EXIT_CODES_HELP,
    NifflerGroup,
    fail_cleanly,
    logging_options,
    setup_logging,
    sigterm_interrupts,
)
from niffler.common.config import load_config, log_config
from niffler.common.errors import ConfigError, DicomNetworkError, InputError
from niffler.net.address import AEAddress
from niffler.net.scu import RetrievalFailed

__all__ = ["load_cold_config", "main"]

#: Exit code when the run finished but some rows failed or were invalid.
EXIT_ROWS_FAILED = 2


def load_cold_config(config_paths: tuple[Path, ...], overrides: dict[str, Any]) -> ColdConfig:
    """Load config.json (+ system.json, named by NifflerSystem or given twice) with CLI overrides."""
    config = load_config(ColdConfig, list(config_paths), overrides)
    if overrides.get("Mode") in ("move", "get") and config.FilePath in QUERY_ONLY_MODES:
        raise ConfigError(
            f"--mode {overrides['Mode']} needs a FilePath template, but FilePath is {config.FilePath!r}"
        )
    return config


@click.group(name="niffler-cold", cls=NifflerGroup, invoke_without_command=True, epilog=EXIT_CODES_HELP)
@click.option("--config", "config_paths", multiple=True,
              type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="JSON config (repeat for upstream's config.json + system.json)")  # fmt: skip
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path), help="overrides CsvFile")
@click.option(
    "--storage-folder", type=click.Path(file_okay=False, path_type=Path), help="overrides StorageFolder"
)
@click.option("--mode", type=click.Choice(MODES), help="overrides Mode (and a CFIND-* FilePath)")
@click.option("--transport", type=click.Choice(TRANSPORTS), help="dimse or dicomweb (overrides Transport)")
@click.option("--dicomweb-url", help="the archive's DICOMweb root URL (overrides DicomWebUrl)")
@click.option("--src-aet", help="the PACS as AET@host:port (overrides SrcAet)")
@click.option("--query-aet", help="our AE title and listening port as AET:port (overrides QueryAet)")
@click.option("--dest-aet", help="an external C-MOVE destination AE title (overrides DestAet)")
@click.option("--workers", type=click.IntRange(1, 64), help="concurrent associations (MaxNifflerProcesses)")
@click.option("--dry-run", is_flag=True, help="print the planned queries and exit; nothing is sent")
@click.option("--fresh", is_flag=True, help="forget earlier progress and serve every row again")
@logging_options("niffler-cold")
@click.pass_context
@fail_cleanly
def main(ctx: click.Context, /, verbose: int, quiet: int, **options: Any) -> None:
    """Retrieve every study (or series) the CSV names from the PACS (C-FIND, then C-MOVE or C-GET).

    With --transport dicomweb: QIDO-RS, then WADO-RS from DicomWebUrl; the
    password or token comes from an environment variable, never the config.

    Re-running the same command resumes: rows already retrieved are skipped.
    Writes retrieval-report.csv into the storage folder. Exits 0 when every
    row was served, 2 when some rows failed or were invalid, 1 on errors
    (a full storage disk among them: unfinished rows stay pending),
    130 when interrupted. `niffler-cold echo` tests the connection.
    """
    setup_logging(verbose, quiet)
    overrides = {
        "CsvFile": str(options["csv_path"]) if options["csv_path"] else None,
        "StorageFolder": options["storage_folder"],
        "Mode": options["mode"],
        "Transport": options["transport"],
        "DicomWebUrl": options["dicomweb_url"],
        "SrcAet": options["src_aet"],
        "QueryAet": options["query_aet"],
        "DestAet": options["dest_aet"],
        "MaxNifflerProcesses": options["workers"],
    }
    config = load_cold_config(options["config_paths"], overrides)
    ctx.obj = config
    if ctx.invoked_subcommand is not None:
        return
    if not config.CsvFile:
        raise InputError("no CSV given: pass --csv FILE or set CsvFile")
    csv_path = Path(config.CsvFile)
    if options["dry_run"]:
        if _dry_run(config, csv_path):
            sys.exit(EXIT_ROWS_FAILED)  # invalid rows: the same verdict a real run would give
        return
    log_config(config)
    with sigterm_interrupts():  # stop like Ctrl-C: finish the report, keep the ledger
        summary = ColdRun(config, csv_path, fresh=options["fresh"]).run()
    click.echo(summary.describe(), err=True)
    click.echo(f"report: {summary.report}", err=True)
    if summary.interrupted:
        sys.exit(130)
    if summary.disk_full:
        sys.exit(1)
    if not summary.ok:
        sys.exit(EXIT_ROWS_FAILED)


def _dry_run(config: ColdConfig, csv_path: Path) -> int:
    """Print each row's plan: line, how it is served, and the C-FIND identifiers; return the invalid rows."""
    mode = config.mode
    web = config.Transport == "dicomweb"
    if web and mode in ("move", "get"):
        mode = "wado-rs"
    invalid = 0
    for item in read_plan(csv_path, config):
        if isinstance(item, Query):
            plan = _describe_queries(item)
            if web:  # the same identifiers, as QIDO-RS searches
                plan = plan.replace("C-FIND", "QIDO-RS")
            click.echo(f"line {item.line}: {plan} -> {mode}")
        else:
            invalid += 1
            click.echo(f"line {item.line}: invalid: {item.message}")
    return invalid


def _describe_queries(query: Query) -> str:
    """The C-FINDs a row is resolved with (see :mod:`niffler.cold_extraction.resolve`)."""

    def keys(identifiers: dict[str, str]) -> str:
        return " ".join(f"{k}={v}" for k, v in identifiers.items())

    if not query.series_level:
        return f"C-FIND STUDY {keys(query.identifiers)}"
    studies = query.study_identifiers
    if set(studies) <= {"StudyInstanceUID"}:
        return f"C-FIND SERIES {keys(query.identifiers)}"
    return f"C-FIND STUDY {keys(studies)}, then SERIES {keys(query.series_identifiers)} in each study"


@main.command(name="echo")
@click.pass_obj
@fail_cleanly
def echo_command(config: ColdConfig) -> None:
    """C-ECHO the PACS (SrcAet), or over DICOMweb send one QIDO-RS search; say what failed, if anything."""
    if config.Transport == "dicomweb":
        from niffler.cold_extraction import dicomweb  # httpx only when asked for

        settings = dicomweb.HttpSettings.from_config(config)
        try:
            status = dicomweb.echo(settings)
        except RetrievalFailed as exc:
            raise DicomNetworkError(str(exc)) from None
        click.echo(f"QIDO-RS {settings.url}: {status}")
        return
    if not config.SrcAet:
        raise ConfigError("SrcAet is empty: name the PACS as AET@host:port")
    peer = AEAddress.parse(config.SrcAet, "SrcAet")
    calling = AEAddress.parse(config.QueryAet, "QueryAet").title
    status = echo(peer, calling, timeout=min(config.TimeoutSeconds, 30.0))
    click.echo(f"C-ECHO {calling} -> {peer}: {status}")
