"""The Storage SCP: niffler-cold's C-MOVE destination and niffler-meta's listener.

It never decodes a received dataset: the instance writer
(:mod:`niffler.net.writer`) stores the bytes as received. A failed write
answers 0xA700 (out of resources) and an unparseable dataset 0xC210 (cannot
understand); neither raises across the network (PS3.4 Annex B.2.3).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from niffler.common.errors import ConfigError
from niffler.common.filepath import DEFAULT_FILE_PATH
from niffler.net import accel
from niffler.net.address import no_delay, validate_ae_title
from niffler.net.messages import StoreHandler, StoreRequest
from niffler.net.syntaxes import UNCOMPRESSED, acceptor_order, is_lossy
from niffler.net.writer import InstanceWriter, StoredInstance, peer_title

if TYPE_CHECKING:  # annotations only: pynetdicom's own classes, named by its one seam
    from niffler.net._pynetdicom30 import Association, PresentationContext

__all__ = ["DEFAULT_MAX_PDU", "StorageSCP"]

log = logging.getLogger(__name__)


#: Default maximum PDU Niffler offers: large PDUs cut per-PDU overhead, which
#: dominates pynetdicom's receive path at the 16 KiB default (see bench/).
DEFAULT_MAX_PDU = 4 * 1024 * 1024
#: How often the listening loop looks for a stop request (seconds).
_SERVER_POLL = 0.05
_LOOPBACK = "127.0.0.1"
#: A-ASSOCIATE-RJ of a receiver that cannot take an association now: rejected-transient, by the
#: service provider (presentation related), local-limit-exceeded (PS3.8 9.3.4): a sender retries.
_REJECT_BUSY = (0x02, 0x03, 0x02)


def _in_use(assoc: Association) -> bool:
    """Return whether an acceptor's association takes a place: requested or established, and not over.

    pynetdicom counts threads: a released one lives on until the peer closes
    its connection, and a connection that never asks for an association (a
    port probe, a load balancer's health check) holds one for ACSE timeout
    seconds (30 by default): under a stream at the limit, senders were rejected.
    """
    if assoc.is_released or assoc.is_aborted or assoc.is_rejected:
        return False
    return bool(assoc.is_established or assoc.requestor.primitive is not None)


def _accepted(event: evt.Event, store: StoreHandler | None = None) -> None:
    """EVT_CONN_OPEN handler of the Storage SCP: no Nagle, and the accelerator where it runs."""
    no_delay(event)
    accel.on_accepted(event.assoc, store)


def _log_lossy(event: evt.Event) -> None:
    """EVT_ACCEPTED handler: say once per association when a context could only be accepted lossy."""
    syntaxes = {cx.transfer_syntax[0] for cx in event.assoc.accepted_contexts}
    lossy = sorted(str(ts.name) for ts in syntaxes if is_lossy(ts))
    if lossy:
        log.warning(
            "association from %s: accepted %s for what the sender offered in no lossless syntax",
            peer_title(event.assoc) or "?", ", ".join(lossy),
        )  # fmt: skip


class StorageSCP:
    """Niffler's Storage SCP: non-blocking start/stop, every storage SOP class.

    Parameters
    ----------
    storage_folder
        Root folder for received files.
    ae_title, port, host
        What to listen as. *port* 0 picks a free port (see :attr:`port`).
    file_path
        dcm4che-style FilePath template for where each instance lands.
    on_stored
        Called on the association's thread with each :class:`StoredInstance`
        after its file is in place; keep it quick (put it on a queue).
    allowed_calling_aets
        If given, associations from any other calling AE title are rejected.
    admit
        Called before each store; a non-zero return is sent as the status
        instead of storing (e.g. 0xA700 when the disk passes a watermark).
    refuse_association
        Called when an association is requested; a reason (one phrase) rejects
        it as transient (local limit exceeded), e.g. while the disk is full.
    on_failed
        Called with the OSError of each write the disk refused (answered 0xA700).
    on_quarantined
        Called with each received dataset refused as truncated (answered 0xC210), whose
        bytes are kept under ``.quarantine/`` in the storage folder.
    transfer_syntax_policy
        ``lossless``, ``uncompressed`` or ``never-lossy`` (see :mod:`niffler.net.syntaxes`).
    log_associations
        Log one INFO line per association when it ends (calling AE, instances, MB,
        seconds, failures) or is rejected; otherwise at DEBUG.
    maximum_associations
        Associations open at once; one more is rejected as transient (local
        limit exceeded). Only associations requested or established and not
        yet over count (see :func:`_in_use`).
    """

    def __init__(
        self,
        storage_folder: str | Path,
        *,
        ae_title: str = "NIFFLER",
        port: int = 0,
        host: str = "0.0.0.0",  # noqa: S104 - a PACS sends from another host
        file_path: str = DEFAULT_FILE_PATH,
        on_stored: Callable[[StoredInstance], None] | None = None,
        allowed_calling_aets: Sequence[str] | None = None,
        admit: Callable[[], int] | None = None,
        on_failed: Callable[[OSError], None] | None = None,
        on_quarantined: Callable[[StoredInstance], None] | None = None,
        refuse_association: Callable[[], str | None] | None = None,
        transfer_syntax_policy: str = "lossless",
        log_associations: bool = False,
        maximum_pdu_size: int = DEFAULT_MAX_PDU,
        maximum_associations: int = 16,
        fsync: bool = False,
    ) -> None:
        self.ae_title = validate_ae_title(ae_title, "QueryAet title")
        self.host = host
        self._requested_port = port
        self.writer = InstanceWriter(storage_folder, file_path, fsync=fsync, on_quarantined=on_quarantined)
        self.on_stored = on_stored
        self.admit = admit
        self.on_failed = on_failed
        self.refuse_association = refuse_association
        self.allowed_calling_aets = (
            [validate_ae_title(t, "allowed calling AE title") for t in allowed_calling_aets]
            if allowed_calling_aets
            else None
        )
        self.maximum_pdu_size = maximum_pdu_size
        self.maximum_associations = maximum_associations
        self.accepted_syntaxes = acceptor_order(transfer_syntax_policy)
        self._server: Any = None
        self._listening = True
        #: Called when a connection it served closes, whatever became of its association.
        self.on_association_end: Callable[[], None] | None = None
        self._lock = threading.Lock()
        self.log_associations = log_associations
        #: id(association) -> [calling AE, start, instances, bytes, failures] while it is open.
        self._sessions: dict[int, list[Any]] = {}

    @property
    def port(self) -> int:
        """Return the port actually listened on (useful when asked for port 0)."""
        if self._server is None:
            return self._requested_port
        return int(self._server.server_address[1])

    @property
    def storage_folder(self) -> Path:
        return self.writer.storage_folder

    def _build_ae(self) -> AE:
        ae = accel.new_ae(self.ae_title)
        ae.maximum_pdu_size = self.maximum_pdu_size
        # _requested enforces the limit on associations in use; pynetdicom's own count (of threads,
        # released ones and bare connections included) stays a backstop.
        ae.maximum_associations = 2 * self.maximum_associations
        if self.allowed_calling_aets:
            ae.require_calling_aet = self.allowed_calling_aets
        return ae

    def _contexts(self) -> list[PresentationContext]:
        """Every storage SOP class with the transfer syntaxes of the policy, plus Verification."""
        syntaxes = [
            *((c.abstract_syntax, self.accepted_syntaxes) for c in AllStoragePresentationContexts),
            (Verification, list(UNCOMPRESSED[:2])),
        ]
        contexts: list[PresentationContext] = []
        for abstract, transfer in syntaxes:
            if abstract is None:
                continue
            contexts.append(accel.shared_context(abstract, transfer))
        return contexts

    def _on_c_store(self, event: evt.Event) -> int:
        status = self.writer.handle_c_store(event, self.on_stored, self.admit, self.on_failed)
        dataset = cast(BytesIO, getattr(event.request, "DataSet", None) or BytesIO())
        self._count(event.assoc, status, len(dataset.getbuffer()))
        return status

    def _counted(self, store: StoreHandler) -> StoreHandler:
        def serve(assoc: Any, request: StoreRequest) -> int:
            status = store(assoc, request)
            self._count(assoc, status, len(request.dataset))
            return status

        return serve

    def _count(self, assoc: Any, status: int, size: int) -> None:
        with self._lock:
            session = self._sessions.get(id(assoc))
            if session is not None:
                session[2] += 1
                session[3] += size
                session[4] += status != 0

    def _requested(self, event: evt.Event) -> None:
        """EVT_REQUESTED handler: reject the association (transient) when full or refused; never raises."""
        assoc = event.assoc
        reason = None
        try:
            if self.refuse_association is not None:
                reason = self.refuse_association()
            server = self._server
            # The requested association is one of those in use (its thread runs this handler).
            in_use = sum(map(_in_use, server.active_associations)) if server is not None else 0
            if reason is None and in_use > self.maximum_associations:
                reason = f"{self.maximum_associations} associations open, the most accepted"
        except Exception as exc:  # a broken check must not cost the association
            log.error("association check failed: %s", type(exc).__name__)
        if reason is None:
            return
        calling = str(getattr(assoc.requestor.primitive, "calling_ae_title", "") or "?").strip()
        log.log(
            logging.INFO if self.log_associations else logging.DEBUG,
            "association from %s rejected (transient): %s", calling, reason,
        )  # fmt: skip
        assoc.acse.send_reject(*_REJECT_BUSY)
        assoc.kill()  # as pynetdicom's own rejection: returns once the reject is sent and the peer gone

    def _opened(self, event: evt.Event) -> None:
        with self._lock:
            self._sessions[id(event.assoc)] = [peer_title(event.assoc) or "?", time.monotonic(), 0, 0, 0]

    def _connection_closed(self, event: evt.Event) -> None:
        if self.on_association_end is not None:
            self.on_association_end()

    def _closed(self, event: evt.Event) -> None:
        with self._lock:
            session = self._sessions.pop(id(event.assoc), None)
        if session is None:
            return
        calling, started, instances, size, failures = session
        how = "aborted" if event.event is evt.EVT_ABORTED else "released"
        log.log(
            logging.INFO if self.log_associations else logging.DEBUG,
            "association from %s %s: %d instance(s), %.1f MB in %.1f s, %d failed",
            calling, how, instances, size / 1e6, time.monotonic() - started, failures,
        )  # fmt: skip

    def start(self, *, listen: bool = True) -> StorageSCP:
        """Start listening in background threads and return self.

        With *listen* False nothing listens: connections accepted elsewhere
        (by a :class:`~niffler.net.fanout.ReceiverPool` parent) are served
        through :meth:`serve_connection`.
        """
        with self._lock:
            if self._server is not None:
                return self
            self.writer.prepare()
            ae = self._build_ae()
            store = self._counted(self.writer.store_handler(self.on_stored, self.admit, self.on_failed))
            handlers: list[Any] = [
                (evt.EVT_C_STORE, self._on_c_store),
                (evt.EVT_CONN_OPEN, _accepted, [store]),
                (evt.EVT_REQUESTED, self._requested),
                (evt.EVT_ACCEPTED, _log_lossy),
                (evt.EVT_ACCEPTED, self._opened),
                (evt.EVT_RELEASED, self._closed),
                (evt.EVT_ABORTED, self._closed),
                (evt.EVT_CONN_CLOSE, self._connection_closed),
            ]
            try:
                if listen:
                    server = accel.start_server(
                        ae, (self.host, self._requested_port), self._contexts(), handlers, _SERVER_POLL
                    )
                else:
                    server = ae.make_server((_LOOPBACK, 0), contexts=self._contexts(), evt_handlers=handlers)
                    server.server_close()  # it only serves connections handed to it
            except OSError as exc:
                raise ConfigError(
                    f"cannot listen on {self.host}:{self._requested_port} as {self.ae_title}: "
                    f"{exc.strerror or exc}"
                ) from None
            self._server = server
            self._listening = listen
        if listen:
            log.info(
                "Storage SCP %s listening on %s:%d; %s", self.ae_title, self.host, self.port, accel.describe()
            )
        return self

    def serve_connection(self, connection: socket.socket, address: tuple[str, int]) -> None:
        """Serve an association on a connection accepted elsewhere (see ``start(listen=False)``)."""
        server = self._server
        if server is None:
            connection.close()
            return
        server.process_request(connection, address)

    def stop(self, grace: float = 5.0) -> None:
        """Stop listening; give associations in flight *grace* seconds to finish, then abort them.

        pynetdicom's shutdown only closes the listening socket: an association
        left open (a peer that hangs) would keep its non-daemon thread, and so
        the process, alive.
        """
        with self._lock:
            server, self._server = self._server, None
        if server is None:
            return
        if self._listening:
            server.shutdown()
        # Only associations in use are waited for: a bare connection (a port probe) would hold the
        # stop for the whole grace, and its abort is no news.
        deadline = time.monotonic() + grace
        in_use = [a for a in server.active_associations if _in_use(a)]
        while in_use and time.monotonic() < deadline:
            time.sleep(0.05)
            in_use = [a for a in server.active_associations if _in_use(a)]
        for assoc in server.active_associations:
            assoc.abort()
        if in_use:
            log.warning("Storage SCP %s aborted %d association(s) still open", self.ae_title, len(in_use))
        log.log(logging.INFO if self._listening else logging.DEBUG, "Storage SCP %s stopped", self.ae_title)

    def __enter__(self) -> StorageSCP:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

