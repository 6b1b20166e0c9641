"""Console entry point of niffler-meta: the receiver daemon and its status command."""

from __future__ import annotations

import dataclasses
import json
import signal
import threading
from pathlib import Path
from typing import Any

import click

from niffler.common.cli import EXIT_CODES_HELP, NifflerGroup, fail_cleanly, logging_options, setup_logging
from niffler.common.config import load_config, log_config
from niffler.common.store import attach_store, resolve_uri
from niffler.meta_extraction.config import MetaConfig
from niffler.meta_extraction.service import open_service, read_status
from niffler.net.address import AEAddress

__all__ = ["load_meta_config", "main"]


def load_meta_config(
    config_path: Path | None,
    storage_folder: Path | None = None,
    aet: str | None = None,
    port: int | None = None,
    mongo_uri: str | None = None,
) -> MetaConfig:
    """Load the config file with the CLI overrides (relative paths follow the file; see load_config)."""
    paths = [config_path] if config_path else []
    config = load_config(MetaConfig, paths, {"StorageFolder": storage_folder, "MongoURI": mongo_uri})
    if aet or port:
        current = AEAddress.parse(config.QueryAet, "QueryAet")
        config = dataclasses.replace(config, QueryAet=f"{aet or current.title}:{port or current.port}")
    return dataclasses.replace(config, FeaturesetFolder=_featureset_folder(config, config_path))


def _featureset_folder(config: MetaConfig, config_path: Path | None) -> Path:
    """FeaturesetFolder, or upstream's ``conf/`` when the config does not set it and it is missing.

    Upstream Niffler reads every ``conf/*.txt`` of the folder it runs in, and
    its ``service/system.json`` names no featureset folder. So when the config
    does not set FeaturesetFolder and ``featuresets/`` beside it is missing,
    ``./conf`` and ``conf`` beside the config file's folder (upstream's
    layout) are tried: the one exception to the rule for relative paths.
    """
    candidates = [config.FeaturesetFolder]
    if config_path is None or "FeaturesetFolder" not in _file_keys(config_path):
        base = config_path.parent.absolute() if config_path is not None else Path.cwd()
        candidates += [Path.cwd() / "conf", base.parent / "conf"]
    return next((c for c in candidates if c.is_dir()), candidates[0])


def _file_keys(path: Path) -> set[str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    return set(data) if isinstance(data, dict) else set()


@click.group(cls=NifflerGroup, invoke_without_command=True, epilog=EXIT_CODES_HELP)
@click.option("--config", "config_path", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="JSON config, e.g. configs/meta_extraction.json")  # fmt: skip
@click.option(
    "--storage-folder", type=click.Path(file_okay=False, path_type=Path), help="overrides StorageFolder"
)
@click.option("--aet", help="AE title to listen as (overrides QueryAet's title)")
@click.option("--port", type=click.IntRange(1, 65535), help="port to listen on (overrides QueryAet's port)")
@click.option("--mongo-uri", help="mongodb:// URI of the store (overrides MongoURI)")
@logging_options("niffler-meta")
@click.pass_context
@fail_cleanly
def main(ctx: click.Context, /, verbose: int, quiet: int, **options: Any) -> None:
    """Receive a DICOM stream and keep its PHI-free metadata in MongoDB (runs until SIGTERM/Ctrl-C).

    `niffler-meta status` shows what the receiver has done.
    """
    setup_logging(verbose, quiet)
    ctx.obj = options
    if ctx.invoked_subcommand is not None:
        return
    config = load_meta_config(**options)
    log_config(config)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    service = open_service(config)
    try:
        service.start()
        service.run(stop)
    finally:
        service.stop()


@main.command()
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of lines")
@click.pass_obj
@fail_cleanly
def status(options: dict[str, Any], as_json: bool) -> None:
    """Show received and extracted counts, the queue, store reachability and disk use."""
    config = load_meta_config(**options)
    store = attach_store(
        resolve_uri(config.MongoURI or None),
        database=config.DatabaseName,
        data_dir=config.StateFolder / "store",
    )
    try:
        figures = read_status(config, store)
    finally:
        if store is not None:
            store.close()
    if as_json:
        click.echo(json.dumps(figures, indent=2))
    else:
        for key, value in figures.items():
            click.echo(f"{key.replace('_', ' ')}: {value}")
