"""The niffler-meta daemon: receive, index, extract, upsert, purge.

Threads: pynetdicom's association threads store files and put an
:class:`Arrival` on a queue (nothing else runs on the network thread); one
worker thread owns the SQLite index and the store, recording arrivals,
extracting pending instances in batches and running the purge when asked;
the caller's thread runs :meth:`MetaService.run`, the ``schedule`` loop.

Durability: a file is recorded in the index when the worker drains the
queue; a file that was stored but not recorded (the process died first) is
found by the start-up scan. A row leaves ``received`` only after the store
acknowledged (journaled) its documents. While the store is down the worker
keeps recording arrivals and retries with backoff; the purge never touches
an instance that is not extracted.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import schedule
from pymongo import UpdateMany, UpdateOne
from pymongo.errors import PyMongoError

from niffler import __version__
from niffler.common.deid import Policy, load_secret
from niffler.common.errors import DeidError, InputError, ServiceError
from niffler.common.store import Store, mask_uri, open_store, resolve_uri
from niffler.common.summary import (
    backfill_summary,
    has_documents,
    summarisable,
    summary_collection,
    summary_update,
)
from niffler.meta_extraction.config import MetaConfig
from niffler.meta_extraction.extract import (
    Featureset,
    build_documents,
    header_tags,
    load_featuresets,
    read_header,
    report_removed,
)
from niffler.meta_extraction.index import InstanceIndex, Pending, SeriesStats
from niffler.meta_extraction.purge import PurgeResult, purge
from niffler.net.address import AEAddress
from niffler.net.scp import StorageSCP
from niffler.net.writer import QUARANTINE_DIR, STATUS_OUT_OF_RESOURCES, StoredInstance

__all__ = [
    "INDEX_FILE",
    "QUARANTINE_FOLDER",
    "Arrival",
    "MetaService",
    "disk_usage_percent",
    "open_service",
    "read_status",
]

log = logging.getLogger(__name__)

INDEX_FILE = "meta-index.sqlite"
#: Folder under StorageFolder for files refused by the receiver or by extraction (kept, never purged).
QUARANTINE_FOLDER = QUARANTINE_DIR
_DRAIN_MAX = 2000
#: Seconds the worker keeps collecting arrivals after the first one before it records and extracts
#: them: under a stream, one index commit and one store round trip per featureset cover a whole
#: burst instead of a few files (the lag it adds stays far below the 2 s goal).
_LINGER = 0.25
_BACKOFF_MAX = 30.0
#: errno of a write that found no room: the disk is full, or the user's quota is.
_NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT})


@dataclass(frozen=True)
class Arrival:
    """A stored file handed from the SCP to the worker."""

    path: Path
    series_uid: str
    sop_uid: str
    received_at: float
    #: Why the receiver refused it (its bytes are in quarantine), or None for a stored instance.
    refused: str | None = None


def disk_usage_percent(folder: Path) -> float:
    usage = shutil.disk_usage(folder)
    return 100.0 * usage.used / usage.total if usage.total else 0.0


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


def _counters(stats: SeriesStats) -> dict[str, Any]:
    """The update that folds a series' instance count and arrival times into its document(s)."""
    return {
        "$max": {"instance_count": stats.instances, "received_at.last": _utc(stats.last_received)},
        "$min": {"received_at.first": _utc(stats.first_received)},
    }


class MetaService:
    """One receiver: Storage SCP + extraction worker + scheduled jobs."""

    def __init__(
        self,
        config: MetaConfig,
        *,
        store: Store,
        policy: Policy,
        featuresets: list[Featureset],
        clock: Callable[[], float] = time.time,
        disk_percent: Callable[[Path], float] = disk_usage_percent,
        owns_store: bool = False,
    ) -> None:
        self.config = config
        self._owns_store = owns_store
        self.store = store
        self.policy = policy
        self.featuresets = featuresets
        self._header_tags = header_tags(featuresets)
        self.clock = clock
        self._disk_percent = disk_percent
        self.storage_folder = config.StorageFolder.absolute()
        self.index_path = config.StateFolder / INDEX_FILE
        address = AEAddress.parse(config.QueryAet, "QueryAet")
        self.scp = StorageSCP(
            self.storage_folder,
            ae_title=address.title,
            port=address.port,
            host=config.BindAddress,
            file_path=config.FilePath,
            on_stored=self._on_stored,
            allowed_calling_aets=config.AllowedCallingAets or None,
            admit=self._admit,
            on_failed=self._on_write_failed,
            on_quarantined=self._on_quarantined,
            refuse_association=self._refuse_association,
            maximum_associations=config.MaxAssociations,
            transfer_syntax_policy=config.TransferSyntaxPolicy,
            log_associations=True,
        )
        self._queue: queue.Queue[Arrival] = queue.Queue()
        self._stop = threading.Event()
        self._stop_deadline = 0.0
        self._purge_asked = threading.Event()
        self._purge_done = threading.Event()
        self._idle = threading.Event()
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()
        self._received = 0
        self._disk_checked = (0.0, 0.0)  # (monotonic time, percent)
        self._refusing = False
        #: Percent in use when a write found the disk full; None while writes find room.
        self._disk_full_at: float | None = None
        self.last_purge: PurgeResult | None = None
        self.store_ok = True
        self._store_prepared = False
        self._index_failing = False

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> MetaService:
        """Start the worker (which first scans for unrecorded files) and the SCP."""
        self.storage_folder.mkdir(parents=True, exist_ok=True)
        self.config.StateFolder.mkdir(parents=True, exist_ok=True)
        self._stop.clear()
        self._worker = threading.Thread(target=self._run_worker, name="niffler-meta-worker", daemon=True)
        self._worker.start()
        self.scp.start()
        log.info(
            "niffler-meta %s pid %d: AE %s on %s:%d, storage %s, store %s (%s), granularity %s",
            __version__, os.getpid(), self.scp.ae_title, self.config.BindAddress, self.scp.port,
            self.storage_folder, mask_uri(self.store.uri), self.store.db.name,
            self.config.ExtractionGranularity,
        )  # fmt: skip
        log.info("de-identification: %s", self.policy.describe())
        return self

    def stop(self, grace: float = 30.0) -> None:
        """Stop receiving, record what arrived, extract what the store takes within *grace* s."""
        self.scp.stop()
        # Leave a margin inside the grace for the last batch to finish.
        self._stop_deadline = time.monotonic() + max(0.0, grace - 5.0)
        self._stop.set()
        if self._worker is not None:
            self._worker.join(grace)
            if self._worker.is_alive():
                log.warning(
                    "extraction did not finish within %.0f s; the rest waits for the next start", grace
                )
            self._worker = None
        if self._owns_store:
            self.store.close()
        log.info("niffler-meta stopped")

    def run(self, stop: threading.Event) -> None:
        """Run the scheduled jobs until *stop* is set (the caller's signal handlers set it).

        Raise ServiceError if the extraction worker died of an unexpected
        error (one file's failure never kills it: that file is quarantined).
        """
        scheduler = schedule.Scheduler()
        scheduler.every().day.at(self.config.PurgeTime).do(self.request_purge)
        scheduler.every().hour.do(self.log_disk_usage)
        self.log_disk_usage()
        while not stop.wait(1.0):
            scheduler.run_pending()
            if self._worker is not None and not self._worker.is_alive():
                raise ServiceError("the extraction worker died; exiting non-zero so a supervisor restarts")

    @property
    def port(self) -> int:
        return self.scp.port

    # --- network thread -----------------------------------------------------------------------

    def _on_stored(self, stored: StoredInstance) -> None:
        self._queue.put(Arrival(stored.path, stored.series_uid, stored.sop_uid, self.clock()))
        with self._lock:
            self._received += 1

    def _on_quarantined(self, kept: StoredInstance) -> None:
        self._queue.put(Arrival(kept.path, "", kept.sop_uid, self.clock(), refused="truncated dataset"))

    def _disk_used(self) -> float:
        """Return the percent of the storage disk in use, measured at most once a second."""
        now = time.monotonic()
        checked_at, percent = self._disk_checked
        if now - checked_at > 1.0:
            percent = self._disk_percent(self.storage_folder)
            self._disk_checked = (now, percent)
        return percent

    def _on_write_failed(self, exc: OSError) -> None:
        """Hear of a write the disk refused; when it found no room, refuse everything until room returns.

        Below the watermark the disk can still fill (a burst between two
        checks, another program, a watermark of 100): the first write that
        finds no room logs one line, and from then on associations are
        rejected (transient) and stores answered 0xA700 without a write.
        """
        if exc.errno not in _NO_ROOM:
            return
        percent = self._disk_percent(self.storage_folder)
        with self._lock:
            if self._disk_full_at is not None:
                return
            self._disk_full_at = percent
            self._disk_checked = (time.monotonic(), percent)
        log.error(
            "the storage disk is full (%s; %.1f%% used in %s): refusing associations and images "
            "(0xA700) until space is freed",
            exc.strerror, percent, self.storage_folder,
        )  # fmt: skip

    def _disk_still_full(self) -> bool:
        """Return whether the disk a write found full still counts as full.

        It does until its use drops one point below the use at that write, and below the watermark.
        """
        with self._lock:
            full_at = self._disk_full_at
        if full_at is None:
            return False
        percent = self._disk_used()
        if percent >= min(full_at - 1.0, self.config.DiskWatermarkPercent):
            return True
        with self._lock:
            if self._disk_full_at is None:
                return False
            self._disk_full_at = None
        log.warning("the storage disk has room again (%.1f%% used): accepting images again", percent)
        return False

    def _refuse_association(self) -> str | None:
        return "the storage disk is full" if self._disk_still_full() else None

    def _admit(self) -> int:
        if self._disk_still_full():
            return STATUS_OUT_OF_RESOURCES
        percent = self._disk_used()
        over = percent >= self.config.DiskWatermarkPercent
        if over != self._refusing:
            self._refusing = over
            if over:
                log.error(
                    "disk %.1f%% full (watermark %.0f%%): refusing new images with 0xA700 until it drops",
                    percent, self.config.DiskWatermarkPercent,
                )  # fmt: skip
            else:
                log.warning("disk %.1f%% full: accepting images again", percent)
        return STATUS_OUT_OF_RESOURCES if over else 0

    # --- jobs ----------------------------------------------------------------------------------

    def request_purge(self) -> None:
        self._purge_done.clear()
        self._purge_asked.set()

    def purge_now(self, timeout: float = 60.0) -> PurgeResult | None:
        """Ask the worker to purge now and wait for it; return the result (None on timeout)."""
        self.request_purge()
        return self.last_purge if self._purge_done.wait(timeout) else None

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until the queue is empty and nothing waits for extraction (for tests and benchmarks)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._idle.clear()
            if self._idle.wait(min(0.5, max(0.0, deadline - time.monotonic()))) and self._queue.empty():
                return True
        return False

    def log_disk_usage(self) -> None:
        usage = shutil.disk_usage(self.storage_folder)
        log.info(
            "disk: %.1f%% used, %.1f GB free in %s",
            100.0 * usage.used / usage.total, usage.free / 1e9, self.storage_folder,
        )  # fmt: skip

    # --- worker thread ------------------------------------------------------------------------

    def _run_worker(self) -> None:
        index = InstanceIndex(self.index_path)
        try:
            self._recover(index)
            next_try, backoff = 0.0, 0.0
            held: list[Arrival] = []  # arrivals the index could not take yet (its disk is full)
            while True:
                stopping = self._stop.is_set()
                arrivals = held + self._drain(0.0 if stopping else 0.1, 0.0 if stopping else _LINGER)
                if not self._record_or_hold(index, arrivals):
                    held = arrivals
                    if stopping:
                        break  # the files are on disk: the next start-up scan records them
                    self._stop.wait(1.0)
                    continue
                held = []
                if self._purge_asked.is_set():
                    self._purge_asked.clear()
                    self.last_purge = purge(
                        index, self.storage_folder, self.clock() - 60.0 * self.config.QuietPeriodMinutes
                    )
                    self._purge_done.set()
                busy = False
                # Stopping with the store down: no last try (each waits out the server selection
                # timeout); what waits is extracted on the next start.
                if time.monotonic() >= next_try and not (stopping and not self.store_ok):
                    try:
                        busy = self._extract_pending(index)
                    except sqlite3.OperationalError as exc:  # the index's disk: the batch is redone
                        self._index_trouble(exc)
                        next_try, busy = time.monotonic() + 1.0, False
                    except PyMongoError as exc:
                        backoff = min(_BACKOFF_MAX, max(1.0, backoff * 2))
                        next_try = time.monotonic() + backoff
                        if self.store_ok:
                            log.error(
                                "metadata store unavailable (%s): files wait on disk, retrying",
                                type(exc).__name__,
                            )
                        self.store_ok = False
                        busy = False
                    else:
                        if not self.store_ok:
                            log.warning("metadata store is back: extraction resumed")
                        self.store_ok, backoff = True, 0.0
                    if not busy and self._queue.empty():
                        self._idle.set()
                finished = not busy or not self.store_ok or time.monotonic() > self._stop_deadline
                if stopping and self._queue.empty() and finished:
                    break
        except Exception as exc:
            # The type only: an exception's text may quote a value. run() turns this into an exit.
            log.critical("the extraction worker failed: %s", type(exc).__name__)
        finally:
            index.close()

    def _record_or_hold(self, index: InstanceIndex, arrivals: list[Arrival]) -> bool:
        """Record *arrivals*; False (logged once) when the index can not be written, e.g. a full disk.

        The files are on disk already; they wait in memory until the index
        takes them (or the next start-up scan finds them), so nothing is lost
        and the worker never dies of it.
        """
        try:
            self._record(index, arrivals)
        except sqlite3.OperationalError as exc:
            self._index_trouble(exc)
            return False
        if self._index_failing:
            self._index_failing = False
            log.warning("the instance index is writable again: recording and extraction resumed")
        return True

    def _index_trouble(self, exc: sqlite3.OperationalError) -> None:
        if not self._index_failing:
            # sqlite's own text ("database or disk is full") names no value.
            log.error(
                "the instance index in %s can not be written (%s): received files wait on disk, retrying",
                self.config.StateFolder, exc,
            )  # fmt: skip
        self._index_failing = True

    def _drain(self, wait: float, linger: float = 0.0) -> list[Arrival]:
        """Take the arrivals waiting (up to *wait* s for the first), and those of the next *linger* s."""
        items: list[Arrival] = []
        try:
            items.append(self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait())
            until = time.monotonic() + linger
            while len(items) < _DRAIN_MAX:
                left = until - time.monotonic()
                items.append(self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait())
        except queue.Empty:
            pass
        return items

    def _record(self, index: InstanceIndex, arrivals: list[Arrival]) -> None:
        uid = self.policy.pseudonymizer.uid
        rows = []
        refused: list[tuple[str, str, float, int, str]] = []
        for a in arrivals:
            try:
                relative = a.path.relative_to(self.storage_folder).as_posix()
                mtime_ns = a.path.stat().st_mtime_ns
            except (ValueError, OSError):
                log.error("ignoring instance %s: outside the storage folder or gone", uid(a.sop_uid))
                continue
            if a.refused is not None:
                refused.append((uid(a.sop_uid), relative, a.received_at, mtime_ns, a.refused))
            else:
                rows.append((uid(a.sop_uid), uid(a.series_uid), relative, a.received_at, mtime_ns))
        index.record(rows)
        index.refuse(refused)  # counted failed, never extracted or purged

    def _recover(self, index: InstanceIndex) -> None:
        """Record files that are on disk but not in the index (stored just before a crash)."""
        known = index.known_paths()
        found: list[Arrival] = []
        unreadable = 0
        for root, dirs, files in os.walk(self.storage_folder):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for name in files:
                path = Path(root) / name
                if path.relative_to(self.storage_folder).as_posix() in known or name.startswith("."):
                    continue
                try:
                    ds = read_header(path)
                    found.append(Arrival(path, str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID),
                                         path.stat().st_mtime))  # fmt: skip
                except (InputError, AttributeError, OSError):
                    unreadable += 1  # its name comes from identifiers: counted, not named
        if unreadable:
            log.warning("start-up scan: %d file(s) in the storage folder are not readable DICOM; left alone",
                        unreadable)  # fmt: skip
        self._record(index, found)
        pending = index.counts()["received"]
        log.info("start-up: %d unrecorded files found, %d instances wait for extraction", len(found), pending)

    def _extract_pending(self, index: InstanceIndex) -> bool:
        """Extract one batch; return True if there was work."""
        if not self._store_prepared:
            self._prepare_store()
        rows = index.pending(self.config.ExtractionBatch)
        if not rows:
            return False
        self._extract_batch(index, rows)
        return True

    def _prepare_store(self) -> None:
        """Create the indexes; build the study summaries of a store written before they existed."""
        for fs in self.featuresets:
            series = self.store.db[fs.name]
            series.create_index("series_key")
            if not summarisable(fs.keys):
                continue
            summary = summary_collection(series)
            summary.create_index("StudyDate")
            if not has_documents(summary) and has_documents(series):
                log.info("featureset %s: building the per-study summary from its series documents", fs.name)
                log.info("featureset %s: %d studies summarised", fs.name, backfill_summary(series))
        self._store_prepared = True

    def _extract_batch(self, index: InstanceIndex, rows: list[Pending]) -> None:
        per_instance = self.config.ExtractionGranularity == "instance"
        method = self.policy.describe()
        by_series: dict[str, list[Pending]] = {}
        for row in rows:
            by_series.setdefault(row.series_key, []).append(row)
        writes: dict[str, list[Any]] = {fs.name: [] for fs in self.featuresets}
        built: list[tuple[str, str, dict[str, Any]]] = []  # (series_key, collection, fields)
        new: dict[str, list[tuple[str, dict[str, Any]]]] = {fs.name: [] for fs in self.featuresets}
        failed: dict[str, str] = {}
        documented: list[str] = []
        for series_key, items in by_series.items():
            if not per_instance and index.is_documented(series_key):
                continue
            for item in items:
                try:
                    documents = build_documents(
                        read_header(self.storage_folder / item.path, self._header_tags),
                        self.featuresets,
                        self.policy,
                    )
                except (InputError, DeidError) as exc:
                    failed[item.sop_key] = str(exc)
                    log.error("extraction failed: instance %s: %s; quarantined", item.sop_key, exc)
                    continue
                except Exception as exc:  # one odd file must never stop the stream
                    failed[item.sop_key] = type(exc).__name__
                    log.error(
                        "extraction failed: instance %s: unexpected %s; quarantined",
                        item.sop_key, type(exc).__name__,
                    )  # fmt: skip
                    continue
                doc_id = item.sop_key if per_instance else series_key
                for name, fields in documents.items():
                    fields["series_key"] = series_key
                    fields["deidentification"] = method
                    built.append((series_key, name, fields))
                    new[name].append((doc_id, fields))
                if not per_instance:
                    documented.append(series_key)
                    break
        stats = index.series_stats(by_series)
        for name in writes:
            # A series documented in this batch gets its fields and its counters in one upsert; the
            # others (series granularity: already documented) one counter update each.
            fresh = {doc_id for doc_id, _ in new[name]} if not per_instance else set()
            for doc_id, fields in new[name]:
                update: dict[str, Any] = {"$set": fields}
                if doc_id in stats and not per_instance:
                    update.update(_counters(stats[doc_id]))
                writes[name].append(UpdateOne({"_id": doc_id}, update, upsert=True))
            for key, st in stats.items():
                if key in fresh:
                    continue
                if per_instance:
                    writes[name].append(UpdateMany({"series_key": key}, _counters(st)))
                else:
                    writes[name].append(UpdateOne({"_id": key}, _counters(st)))
        summaries: dict[str, list[UpdateOne]] = {fs.name: [] for fs in self.featuresets}
        for series_key, name, fields in built:
            fold = summary_update(fields, _utc(stats[series_key].first_received))
            if fold is not None:
                summaries[name].append(fold)
        for name, ops in writes.items():
            if ops:
                self.store.db[name].bulk_write(ops, ordered=True)
            if summaries[name]:  # after the series: a crash between leaves the batch to redo
                summary_collection(self.store.db[name]).bulk_write(summaries[name], ordered=False)
        index.set_documented(documented)
        paths = {r.sop_key: r.path for r in rows}
        index.quarantine((key, self._quarantine(key, paths[key]), error) for key, error in failed.items())
        index.mark([r.sop_key for r in rows if r.sop_key not in failed], "extracted")

    def _quarantine(self, sop_key: str, path: str) -> str:
        """Move a file extraction refused to ``.quarantine/<sop_key>.dcm``; return its new relative path.

        The keyed name holds no identifier, and the start-up scan skips
        dot-folders, so the file is kept for inspection and never retried by
        accident. If the move fails, the file stays where it is.
        """
        target = Path(QUARANTINE_FOLDER) / f"{sop_key}.dcm"
        try:
            (self.storage_folder / QUARANTINE_FOLDER).mkdir(exist_ok=True)
            os.replace(self.storage_folder / path, self.storage_folder / target)
        except OSError as exc:
            log.warning("instance %s: not moved to quarantine (%s); left in place", sop_key, exc.strerror)
            return path
        return target.as_posix()

    @property
    def received(self) -> int:
        """Instances stored since this process started."""
        with self._lock:
            return self._received


def open_service(
    config: MetaConfig,
    *,
    clock: Callable[[], float] = time.time,
    disk_percent: Callable[[Path], float] = disk_usage_percent,
) -> MetaService:
    """Build the receiver a config describes: secret, policy, featuresets and store (not started)."""
    policy = Policy(config, load_secret(config.DeidKeyFile or None, config.StateFolder))
    featuresets = load_featuresets(config.FeaturesetFolder)
    report_removed(featuresets, policy)
    store = open_store(
        resolve_uri(config.MongoURI or None),
        database=config.DatabaseName,
        data_dir=config.StateFolder / "store",
        require_ping=False,
    )
    return MetaService(
        config,
        store=store,
        policy=policy,
        featuresets=featuresets,
        clock=clock,
        disk_percent=disk_percent,
        owns_store=True,
    )


def read_status(config: MetaConfig, store: Store | None) -> dict[str, Any]:
    """Return the receiver's figures from its index, the disk and the store (for ``status``)."""
    path = config.StateFolder / INDEX_FILE
    out: dict[str, Any] = {"index": str(path)}
    if path.exists():
        index = InstanceIndex(path, readonly=True)
        try:
            counts = index.counts()
        finally:
            index.close()
        out.update(
            instances_received=sum(counts[s] for s in ("received", "extracted", "failed", "purged")),
            waiting_for_extraction=counts["received"],
            instances_extracted=counts["extracted"] + counts["purged"],
            instances_failed=counts["failed"],
            instances_purged=counts["purged"],
            series_seen=counts["series"],
            series_extracted=counts["series_documented"],
        )
    else:
        out["index"] += " (missing: the receiver has not run here)"
    folder = config.StorageFolder
    if folder.exists():
        out["disk_used_percent"] = round(disk_usage_percent(folder), 1)
        out["disk_free_gb"] = round(shutil.disk_usage(folder).free / 1e9, 1)
    out["store"] = (
        "not running (embedded store of a stopped receiver)"
        if store is None
        else (f"{mask_uri(store.uri)} " + ("reachable" if store.ping() else "UNREACHABLE"))
    )
    return out
