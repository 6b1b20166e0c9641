"""Open the metadata store: a real MongoDB by URI, or the embedded default.

One code path, pymongo everywhere. The URI comes from the config's
``MongoURI``, else ``NIFFLER_MONGO_URI``, else upstream's ``MONGO_URI``
environment variable. With none, Niffler uses the embedded default: a
MongoDB-wire-compatible server (SecantusDB, the ``embedded`` extra) on
127.0.0.1 with its data in a folder. The first process to open that folder
starts the server in-process and publishes its address in
``<folder>/niffler-store.json``; other processes (``niffler-scanner-util``
while ``niffler-meta`` runs) connect to it instead of opening the folder a
second time, which the server does not allow.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import ConfigurationError, PyMongoError

from niffler.common.errors import ConfigError, EmbeddedStoreMissing, StoreUnavailable

__all__ = ["DEFAULT_DATABASE", "Store", "attach_store", "mask_uri", "open_store", "resolve_uri"]

log = logging.getLogger(__name__)

DEFAULT_DATABASE = "ScannersInfo"
URI_ENV_VARS = ("NIFFLER_MONGO_URI", "MONGO_URI")
ADDRESS_FILE = "niffler-store.json"


def resolve_uri(configured: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """Return the store URI from config, else the environment, else None (embedded)."""
    if configured:
        return configured
    env = os.environ if environ is None else environ
    for name in URI_ENV_VARS:
        if env.get(name):
            return env[name]
    return None


def mask_uri(uri: str) -> str:
    """Return *uri* with any password replaced, for logs."""
    scheme, sep, rest = uri.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at or ":" not in creds:
        return uri
    return f"{scheme}{sep}{creds.split(':', 1)[0]}:****@{host}"


@dataclass
class Store:
    """An open metadata store: the pymongo client, the database and any embedded server."""

    client: MongoClient[dict[str, Any]]
    db: Database[dict[str, Any]]
    uri: str
    embedded: bool = False
    _server: Any = None
    _address_file: Path | None = None

    def ping(self) -> bool:
        """Return True if the store answers now."""
        try:
            self.client.admin.command("ping")
        except PyMongoError:
            return False
        return True

    def close(self) -> None:
        """Close the client and stop the embedded server if this process started it."""
        self.client.close()
        if self._server is not None:
            if self._address_file is not None:
                self._address_file.unlink(missing_ok=True)
            self._server.stop()
            self._server = None
            log.info("embedded store stopped")

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _connect(
    uri: str, database: str, timeout_ms: int
) -> tuple[MongoClient[dict[str, Any]], Database[dict[str, Any]]]:
    try:
        # journal=True (write concern j): a write is acknowledged only once it
        # is in the journal. Without it a crashed server loses acknowledged
        # writes (seen with SecantusDB and a standalone mongod alike).
        client: MongoClient[dict[str, Any]] = MongoClient(
            uri,
            serverSelectionTimeoutMS=timeout_ms,
            connectTimeoutMS=timeout_ms,
            tz_aware=True,
            journal=True,
        )
    except ConfigurationError as exc:
        raise ConfigError(f"MongoURI is not valid: {exc}") from None
    return client, client[database]


def _ping_or_raise(client: MongoClient[dict[str, Any]], uri: str) -> None:
    try:
        client.admin.command("ping")
    except PyMongoError as exc:
        client.close()
        raise StoreUnavailable(
            f"metadata store {mask_uri(uri)} is unreachable: {type(exc).__name__}"
        ) from None


def open_store(
    uri: str | None,
    *,
    database: str = DEFAULT_DATABASE,
    data_dir: str | Path | None = None,
    timeout_ms: int = 5000,
    require_ping: bool = True,
) -> Store:
    """Return an open :class:`Store`.

    Parameters
    ----------
    uri
        ``mongodb://...`` for a real MongoDB (standalone, replica set or
        sharded); None for the embedded default in *data_dir*.
    require_ping
        If True, raise StoreUnavailable when the store does not answer within
        *timeout_ms*; long-running services pass False and retry.
    """
    if uri:
        if not uri.startswith(("mongodb://", "mongodb+srv://")):
            raise ConfigError(f"MongoURI must start with mongodb:// or mongodb+srv://, got {mask_uri(uri)!r}")
        client, db = _connect(uri, database, timeout_ms)
        if require_ping:
            _ping_or_raise(client, uri)
        log.info("metadata store: %s, database %s", mask_uri(uri), database)
        return Store(client=client, db=db, uri=uri)
    if data_dir is None:
        raise ConfigError("no MongoURI is set and no folder was given for the embedded store")
    return _open_embedded(Path(data_dir), database, timeout_ms)


def attach_store(
    uri: str | None, *, database: str = DEFAULT_DATABASE, data_dir: Path, timeout_ms: int = 2000
) -> Store | None:
    """Return a client of the store a running service uses, or None if its embedded store is down.

    Never starts an embedded server: for status commands and readers that
    must not hold the store's folder.
    """
    if uri:
        return open_store(uri, database=database, timeout_ms=timeout_ms, require_ping=False)
    running = _running_address(data_dir / ADDRESS_FILE)
    if running is None:
        return None
    client, db = _connect(running, database, timeout_ms)
    return Store(client=client, db=db, uri=running, embedded=True)


def _open_embedded(data_dir: Path, database: str, timeout_ms: int) -> Store:
    data_dir.mkdir(parents=True, exist_ok=True)
    address_file = data_dir / ADDRESS_FILE
    # The lock makes "find a running server, else start one" atomic across processes.
    with open(data_dir / "niffler-store.lock", "a+") as lock, _flock(lock):
        running = _running_address(address_file)
        if running is not None:
            client, db = _connect(running, database, timeout_ms)
            try:
                _ping_or_raise(client, running)
            except StoreUnavailable:
                address_file.unlink(missing_ok=True)
            else:
                log.info("metadata store: embedded server of another process at %s", running)
                return Store(client=client, db=db, uri=running, embedded=True)
        try:
            from secantus import SecantusDBServer
        except ImportError:
            raise EmbeddedStoreMissing(
                "no MongoURI is set and the embedded store is not installed: "
                "pip install 'niffler[embedded]', or set MongoURI / NIFFLER_MONGO_URI"
            ) from None
        server = SecantusDBServer(
            host="127.0.0.1",
            port=0,
            storage_path=str(data_dir / "db"),
            replica_set_name=None,
            enable_test_commands=False,
            durable=True,
            sync_on_commit=True,
        )
        server.start()
        host, port = server.address
        served = f"mongodb://{host}:{port}/?directConnection=true"
        address_file.write_text(json.dumps({"uri": served, "pid": os.getpid()}))
        client, db = _connect(served, database, timeout_ms)
    log.info("metadata store: embedded server in %s at %s", data_dir, served)
    return Store(client=client, db=db, uri=served, embedded=True, _server=server, _address_file=address_file)


def _running_address(address_file: Path) -> str | None:
    """Return the URI published by a live embedded server, or None."""
    try:
        info = json.loads(address_file.read_text())
        pid, uri = int(info["pid"]), str(info["uri"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return uri


@contextlib.contextmanager
def _flock(handle: Any) -> Iterator[None]:
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
