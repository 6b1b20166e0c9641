"""One niffler-cold run: plan the CSV, serve its rows with N workers, report the truth.

The pieces, each readable on its own:

- :mod:`~niffler.cold_extraction.plan`: CSV rows -> queries (pure);
- :mod:`~niffler.cold_extraction.feed`: which rows still need serving;
- :mod:`~niffler.cold_extraction.pool`: the worker threads and Ctrl-C;
- :mod:`~niffler.cold_extraction.rows`: what a worker does with a row;
- :mod:`~niffler.cold_extraction.resolve`: C-FIND, a row -> studies or series;
- :mod:`~niffler.cold_extraction.fetch` and :mod:`~niffler.cold_extraction.verdict`:
  C-MOVE/C-GET and whether a study or series arrived whole;
- :mod:`~niffler.cold_extraction.report`: the summary and the CSV outputs;
- :mod:`~niffler.cold_extraction.dicomweb`: with Transport dicomweb, QIDO-RS
  and WADO-RS behind the same session seam in place of C-FIND and C-MOVE/C-GET.

This module wires them: the progress ledger (``.niffler-cold-progress.sqlite``
in StorageFolder, the record of what was retrieved; ``fresh`` forgets it),
the receiver the PACS C-MOVEs to, and the outputs at the end, also after
Ctrl-C (rows still queued then stay pending).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from niffler.cold_extraction.config import ColdConfig
from niffler.cold_extraction.feed import feed_rows
from niffler.cold_extraction.fetch import NAMESPACES, Fetcher
from niffler.cold_extraction.plan import Query, read_plan, seconds_until_window
from niffler.cold_extraction.pool import WorkerPool
from niffler.cold_extraction.progress import Progress
from niffler.cold_extraction.report import CFIND_OUTPUT, REPORT_NAME, Summary, report_rows, write_outputs
from niffler.cold_extraction.retrieve import (
    CFIND_DETAILED_KEYS,
    CFIND_ONLY_KEYS,
    RESOLVE_KEYS,
    PacsSession,
    Receipts,
    Session,
)
from niffler.cold_extraction.retry import Retrier, Stopped
from niffler.cold_extraction.rows import RowWorker
from niffler.common.errors import ConfigError
from niffler.common.ledger import Ledger
from niffler.common.notify import send_completion
from niffler.net import accel
from niffler.net.address import AEAddress
from niffler.net.fanout import ReceiverPool, can_fork_receivers
from niffler.net.scp import StorageSCP
from niffler.net.writer import INCOMING_DIR, InstanceWriter, StoredInstance

if TYPE_CHECKING:
    from niffler.cold_extraction.dicomweb import HttpSettings

__all__ = ["CFIND_OUTPUT", "LEDGER_NAME", "REPORT_NAME", "ColdRun", "Summary", "listen_address"]

log = logging.getLogger(__name__)

LEDGER_NAME = ".niffler-cold-progress.sqlite"


def listen_address(bind_address: str, peer: AEAddress) -> str:
    """The address our receiver listens on: *bind_address*, or when empty the local one that reaches *peer*.

    The kernel's route to the PACS names the interface the PACS can reach us
    on (127.0.0.1 for a PACS on loopback); no packet is sent to find it.
    """
    if bind_address.strip():
        return bind_address.strip()
    try:
        family, _, _, _, address = socket.getaddrinfo(peer.host, peer.port, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect(address)
            return str(probe.getsockname()[0])
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(
            f"cannot tell which local address reaches the PACS at {peer.host} ({reason}): set BindAddress"
        ) from None


class ColdRun:
    """Serve every row of a CSV against the PACS in ``config.mode``."""

    def __init__(
        self,
        config: ColdConfig,
        csv_path: Path,
        *,
        fresh: bool = False,
        show_progress: bool | None = None,
        now: Callable[[], datetime] = datetime.now,
    ) -> None:
        #: With Transport dicomweb, where the archive is and the credentials (from the environment).
        self.web: HttpSettings | None = None
        if config.Transport == "dicomweb":
            # Imported only when asked for: httpx is a twentieth of a DIMSE run's start-up.
            from niffler.cold_extraction import dicomweb

            self.web = dicomweb.HttpSettings.from_config(config)
        if self.web is None and not config.SrcAet:
            raise ConfigError("SrcAet is empty: name the PACS as AET@host:port")
        self.config = config
        self.csv_path = csv_path
        self.fresh = fresh
        self.show_progress = sys.stderr.isatty() if show_progress is None else show_progress
        self.now = now
        self.mode = config.mode
        self.namespace = "cold.rows" if self.mode in ("move", "get") else f"cold.{self.mode}"
        self.return_keys: tuple[str, ...] = {
            "cfind-only": CFIND_ONLY_KEYS,
            "cfind-detailed": CFIND_DETAILED_KEYS,
        }.get(self.mode, RESOLVE_KEYS)
        self.peer = AEAddress.parse(config.SrcAet, "SrcAet") if self.web is None else None
        self.query_aet = AEAddress.parse(config.QueryAet, "QueryAet")
        self.local_receiver = (
            self.web is None and self.mode == "move" and config.DestAet.strip() in ("", self.query_aet.title)
        )
        self.stop = threading.Event()
        self.receipts = Receipts()
        self.storage = config.StorageFolder
        self.summary = Summary(self.mode, self.storage / REPORT_NAME)
        #: Studies (series) per transfer: WADO-RS asks for one at a time.
        self.per_move = 1 if self.web is not None else config.StudiesPerMove
        if self.web is not None:
            self.summary.transfer_verb = "WADO-RS request"

    def _session(self, writer: InstanceWriter | None) -> Session:
        if self.web is not None:
            from niffler.cold_extraction import dicomweb

            return dicomweb.DicomWebSession(self.web, mode=self.mode, receipts=self.receipts, writer=writer)
        counts = self.mode == "get" or self.local_receiver
        return PacsSession(
            peer=self.peer,
            calling_aet=self.query_aet.title,
            mode=self.mode,
            timeout=self.config.TimeoutSeconds,
            move_destination=self.config.DestAet.strip(),
            receipts=self.receipts if counts else None,
            writer=writer,
            transfer_syntax_policy=self.config.TransferSyntaxPolicy,
        )

    def receiver(self) -> StorageSCP | ReceiverPool | None:
        """Our Storage SCP for C-MOVE, closed to all but the PACS and AllowedCallingAets; None if external.

        With more than one worker it is a pool of receiver processes (one per
        worker, at most one per CPU) behind the one port: receiving is the
        Python work of a retrieval, and one process has one interpreter lock.
        """
        if not self.local_receiver or self.peer is None:  # no peer: DICOMweb, nothing to receive
            if self.mode == "move" and self.web is None:
                log.info("C-MOVE destination %s is external: no local receiver started", self.config.DestAet)
            return None
        allowed = self.config.receiver_calling_aets
        log.info("receiver accepts %s", "any calling AE title" if allowed is None else ", ".join(allowed))
        host = listen_address(self.config.BindAddress, self.peer)

        def make_scp(
            on_stored: Callable[[StoredInstance], None], on_failed: Callable[[OSError], None]
        ) -> StorageSCP:
            return StorageSCP(
                self.storage,
                ae_title=self.query_aet.title,
                port=self.query_aet.port,
                host=host,
                file_path=self.config.FilePath,
                allowed_calling_aets=allowed,
                on_stored=on_stored,
                on_failed=on_failed,
                transfer_syntax_policy=self.config.TransferSyntaxPolicy,
            )

        processes = min(self.config.MaxNifflerProcesses, os.cpu_count() or 1)
        if processes > 1 and not can_fork_receivers():
            log.info("the receiver runs in this process: receiver processes cannot be forked here")
        elif processes > 1:
            pool = ReceiverPool(
                processes, make_scp, ae_title=self.query_aet.title, host=host, port=self.query_aet.port,
                on_stored=self.receipts.on_stored, on_failed=self.receipts.on_failed,
                incoming=self.storage / INCOMING_DIR,
            )  # fmt: skip
            self.receipts.sync = pool.sync
            return pool
        return make_scp(self.receipts.on_stored, self.receipts.on_failed)

    def run(self) -> Summary:
        """Serve every row; return the summary (``interrupted`` set after Ctrl-C)."""
        started = time.monotonic()
        total = sum(1 for _ in read_plan(self.csv_path, self.config))
        receiver = self.receiver()  # a bad BindAddress fails before anything is written
        self.storage.mkdir(parents=True, exist_ok=True)
        with Ledger(self.storage / LEDGER_NAME) as ledger:
            if self.fresh:
                ledger.reset(self.namespace)
                if self.namespace == "cold.rows":
                    for namespace in NAMESPACES.values():
                        ledger.reset(namespace)
            if receiver is not None:
                receiver.start()
            if self.web is not None:
                self.web.warn_if_cleartext()
            else:
                log.info("%s", accel.describe())
            fetcher = Fetcher(
                ledger=ledger,
                summary=self.summary,
                retrier=Retrier(self.config.Retries, self.config.RetryDelaySeconds, self.stop),
                receipts=self.receipts,
                per_move=self.per_move,
                storage=self.storage,
            )
            progress = Progress(total, self.receipts, fetcher.tally, self.show_progress)
            try:
                self.summary.interrupted = self._serve(ledger, fetcher, progress)
            finally:
                progress.close()
                if receiver is not None:
                    receiver.stop(grace=1.0 if self.summary.interrupted else 5.0)
            self.summary.seconds = time.monotonic() - started
            self.summary.instances = fetcher.tally.total
            self.summary.bytes = self.receipts.bytes
            self.write_outputs(ledger)
        self._notify()
        return self.summary

    def _serve(self, ledger: Ledger, fetcher: Fetcher, progress: Progress) -> bool:
        """Serve the rows with the worker pool; return True if interrupted."""
        writer = None
        retrieving = self.mode in ("move", "get")
        if self.mode == "get" or (self.web is not None and retrieving):  # one for every C-GET / WADO-RS
            writer = InstanceWriter(self.storage, self.config.FilePath)
            writer.prepare()
        work = RowWorker(
            mode=self.mode,
            namespace=self.namespace,
            return_keys=self.return_keys,
            ledger=ledger,
            summary=self.summary,
            retrier=fetcher.retrier,
            fetcher=fetcher,
            progress=progress,
            per_move=self.per_move,
            wait_for_window=self._wait_for_window,
        )
        sessions = [self._session(writer) for _ in range(self.config.MaxNifflerProcesses)]
        pool = WorkerPool(sessions, work, self.stop)

        def feed(put: Callable[[Query], None]) -> None:
            feed_rows(
                read_plan(self.csv_path, self.config),
                put,
                ledger=ledger,
                namespace=self.namespace,
                summary=self.summary,
                progress=progress,
            )

        return pool.run(feed)

    def _wait_for_window(self) -> None:
        """With NightlyOnly, wait until the window opens; raise Stopped if the run stops first."""
        if not self.config.NightlyOnly:
            return
        announced = False
        while not self.stop.is_set():
            wait = seconds_until_window(self.now(), self.config.StartHour, self.config.EndHour)
            if wait <= 0:
                return
            if not announced:
                log.info(
                    "outside the nightly window %02d:00-%02d:00: pausing %.0f min",
                    self.config.StartHour, self.config.EndHour, wait / 60,
                )  # fmt: skip
                announced = True
            self.stop.wait(min(wait, 60.0))
        raise Stopped

    def write_outputs(self, ledger: Ledger) -> None:
        """Write retrieval-report.csv (and cfind-output.csv) from the CSV and the ledger."""
        rows = report_rows(read_plan(self.csv_path, self.config), lambda key: ledger.get(self.namespace, key))
        query_only = self.mode.startswith("cfind")
        write_outputs(
            self.summary.report,
            rows,
            self.storage / CFIND_OUTPUT if query_only else None,
            self.return_keys,
        )

    def _notify(self) -> None:
        if not self.config.SendEmail or not self.config.YourEmail:
            return
        verdict = "completed" if self.summary.ok else "finished with failures"
        send_completion(
            self.config.YourEmail,
            f"Niffler cold extraction {self.config.NifflerID} {verdict}",
            f"{self.summary.describe()}\n\nReport: {self.summary.report}\n",
        )
