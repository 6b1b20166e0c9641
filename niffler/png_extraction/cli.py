"""Console entry point of niffler-png: convert a folder of DICOM to PNGs plus de-identified metadata."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import click

from niffler.common.cli import (
    EXIT_CODES_HELP,
    NifflerCommand,
    fail_cleanly,
    logging_options,
    setup_logging,
    sigterm_interrupts,
)
from niffler.common.config import load_config, log_config
from niffler.common.errors import InputError
from niffler.png_extraction.config import LEVELS, PngConfig
from niffler.png_extraction.pipeline import run
from niffler.png_extraction.render import VOI_MODES
from niffler.png_extraction.scrub import SCRUB_POLICIES

__all__ = ["load_png_config", "main"]

#: Exit code when the batch completed but some DICOM files failed to convert.
EXIT_SOME_FAILED = 2


def load_png_config(config_path: Path | None, overrides: dict[str, Any]) -> PngConfig:
    """Load the config file with CLI overrides; a relative FeaturesetFile follows the file."""
    config = load_config(PngConfig, [config_path] if config_path else [], overrides)
    if config_path is not None and not config.FeaturesetFile.is_absolute():
        config = dataclasses.replace(config, FeaturesetFile=config_path.parent / config.FeaturesetFile)
    return config


@click.command(name="niffler-png", cls=NifflerCommand, epilog=EXIT_CODES_HELP)
@click.option("--config", "config_path", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="JSON config, e.g. configs/png_extraction.json")  # fmt: skip
@click.option("--dicom-home", type=click.Path(file_okay=False, path_type=Path), help="overrides DICOMHome")
@click.option(
    "--output-directory", type=click.Path(file_okay=False, path_type=Path), help="overrides OutputDirectory"
)
@click.option("--depth", type=click.IntRange(0), help="overrides Depth (files exactly this deep)")
@click.option("--use-processes", type=click.IntRange(0), help="overrides UseProcesses (0: every core)")
@click.option("--flattened-to-level", type=click.Choice(LEVELS), help="overrides FlattenedToLevel")
@click.option("--16-bit/--8-bit", "is16bit", default=None, help="overrides is16Bit")
@click.option("--print-images/--no-print-images", default=None, help="overrides PrintImages")
@click.option("--voi-mode", type=click.Choice(VOI_MODES), help="overrides VOIMode")
@click.option(
    "--scrub-burned-in-text",
    type=click.Choice(SCRUB_POLICIES),
    help="overrides ScrubBurnedInText: blank the text in the pixels of at-risk images (auto), all, or none",
)
@click.option("--fresh", is_flag=True, help="forget earlier progress and convert everything again")
@click.option("--retry-failed", is_flag=True, help="convert files that failed in an earlier run again")
@click.option("--dask-scheduler", metavar="ADDRESS", help="run the conversions on this Dask cluster")
@logging_options("niffler-png")
@fail_cleanly
def main(
    config_path: Path | None,
    fresh: bool,
    retry_failed: bool,
    dask_scheduler: str | None,
    verbose: int,
    quiet: int,
    **options: Any,
) -> None:
    """Convert every DICOM file under DICOMHome to PNG, with metadata.csv and mapping.csv.

    Exits 0 when every DICOM file converted, 2 when some failed (see
    failures.csv), 1 on a configuration or input error, 130 when
    interrupted (Ctrl-C or SIGTERM; the same command resumes).
    """
    setup_logging(verbose, quiet)
    overrides = {
        "DICOMHome": options["dicom_home"],
        "OutputDirectory": options["output_directory"],
        "Depth": options["depth"],
        "UseProcesses": options["use_processes"],
        "FlattenedToLevel": options["flattened_to_level"],
        "is16Bit": options["is16bit"],
        "PrintImages": options["print_images"],
        "VOIMode": options["voi_mode"],
        "ScrubBurnedInText": options["scrub_burned_in_text"],
    }
    config = load_png_config(config_path, overrides)
    log_config(config)
    with sigterm_interrupts():  # stop like Ctrl-C: workers shut down, CSVs written, ledger kept
        summary = run(config, fresh=fresh, retry_failed=retry_failed, dask_scheduler=dask_scheduler)
    click.echo(summary.describe(), err=True)
    click.echo(f"output: {config.OutputDirectory}", err=True)
    if not summary.saw_dicom:
        raise InputError(
            f"DICOMHome {str(config.DICOMHome)!r} holds no DICOM file ({summary.discovered} file(s) found): "
            "is it the right folder?"
        )
    failing = summary.failed_dicom + summary.failed_earlier
    if failing:
        click.echo(
            f"{failing} DICOM file(s) failed: see failures.csv (it names original files: keep it private)",
            err=True,
        )
        sys.exit(EXIT_SOME_FAILED)
