"""C-ECHO, C-FIND, C-MOVE and C-GET as a requestor: one reusable association to a PACS.

A :class:`QueryRetrieveSession` is one association to the PACS, opened on
first use and reused for every request; when the PACS aborts, times out or
the socket breaks, the session drops it and the next call opens a fresh one.
It carries the Study Root FIND model, and MOVE or GET; for GET it also
proposes the storage classes with the SCP role and stores what arrives
through an :class:`~niffler.net.writer.InstanceWriter`. Messages name
statuses and counts, never identifiers.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from niffler.common.errors import AssociationError
from niffler.net import accel
from niffler.net.address import AEAddress, associate, open_association
from niffler.net.messages import PENDING, RetrieveResponse
from niffler.net.syntaxes import get_contexts
from niffler.net.writer import InstanceWriter, StoredInstance

if TYPE_CHECKING:  # annotations only: pynetdicom's own classes, named by its one seam
    from niffler.net._pynetdicom30 import Association

__all__ = [
    "PENDING",
    "QueryRetrieveSession",
    "RetrievalFailed",
    "RetrieveResponse",
    "describe_status",
    "echo",
    "new_requestor_ae",
]

T = TypeVar("T")
_STATUS_NAMES = {
    0x0000: "Success",
    0x0001: "Warning: requested optional attributes are not supported",
    0xA700: "Refused: out of resources",
    0xA701: "Refused: out of resources, unable to calculate the number of matches",
    0xA702: "Refused: out of resources, unable to perform sub-operations",
    0xA801: "Refused: move destination unknown",
    0xA900: "Error: identifier does not match SOP class",
    0xB000: "Warning: sub-operations complete, one or more failures or warnings",
    0xC000: "Failed: unable to process",
    0xFE00: "Cancelled",
    0x0122: "Refused: SOP class not supported",
    0x0124: "Refused: not authorised",
    0x0211: "Unrecognised operation",
}


def describe_status(code: int) -> str:
    """Return a DIMSE status as ``0xC000 (Failed: unable to process)``."""
    name = _STATUS_NAMES.get(code)
    if name is None and 0xA700 <= code <= 0xA7FF:
        name = "Refused: out of resources"
    elif name is None and 0xC000 <= code <= 0xCFFF:
        name = "Failed: unable to process"
    return f"0x{code:04X}" + (f" ({name})" if name else "")


class RetrievalFailed(Exception):
    """One attempt at a C-FIND / C-MOVE / C-GET failed; the message holds no identifiers."""


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple, MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value)


def new_requestor_ae(calling_aet: str, timeout: float) -> AE:
    """Return an AE whose waits all end after *timeout* (association set-up after 30 s at most)."""
    ae = accel.new_ae(calling_aet)
    ae.acse_timeout = min(timeout, 30.0)
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    return ae


class _TakenResponses(logging.Handler):
    """Counts the responses pynetdicom's own association loop took from one association's queue.

    Without the accelerator, pynetdicom 3.0's requestor loop can take a
    C-FIND response before the caller does (pynetdicom issue #875: its pause
    flag is briefly set on every turn of the loop), and only logs
    "Received unexpected C-FIND service message" from the association's
    thread. A C-FIND that lost a match that way is failed, so it is retried,
    instead of returning fewer studies than the PACS matched.
    """

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self._thread: int | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self._thread and str(record.msg).startswith("Received unexpected"):
            self.count += 1

    @contextlib.contextmanager
    def watching(self, assoc: Association) -> Iterator[None]:
        self._thread = assoc.ident
        logger = logging.getLogger("pynetdicom.association")
        logger.addHandler(self)
        try:
            yield
        finally:
            logger.removeHandler(self)


class QueryRetrieveSession:
    """One association to the PACS, reused across requests.

    *mode* is ``move``, ``get`` or a C-FIND-only mode. For ``get``, *writer*
    stores the instances arriving on the association, and *on_stored* /
    *on_failed* hear of each stored instance and each write the disk refused.
    """

    def __init__(
        self,
        *,
        peer: AEAddress,
        calling_aet: str,
        mode: str,
        timeout: float,
        move_destination: str = "",
        writer: InstanceWriter | None = None,
        on_stored: Callable[[StoredInstance], None] | None = None,
        on_failed: Callable[[OSError], None] | None = None,
        transfer_syntax_policy: str = "lossless",
    ) -> None:
        self.peer = peer
        self.calling_aet = calling_aet
        self.mode = mode
        self.timeout = timeout
        self.move_destination = move_destination or calling_aet
        self.writer = writer
        self.on_stored = on_stored
        self.on_failed = on_failed
        self.transfer_syntax_policy = transfer_syntax_policy
        self._assoc: Association | None = None
        #: Whether the PACS has answered a request on the current association.
        self._answered = False
        self._lock = threading.Lock()

    @property
    def verb(self) -> str:
        """The retrieval this session does: ``C-GET`` or ``C-MOVE``."""
        return "C-GET" if self.mode == "get" else "C-MOVE"

    def _build_ae(self) -> AE:
        ae = new_requestor_ae(self.calling_aet, self.timeout)
        ae.maximum_pdu_size = 0  # no limit: large PDUs for C-GET's incoming stores
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        if self.mode == "move":
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        elif self.mode == "get":
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
            for context in get_contexts(self.transfer_syntax_policy):
                ae.add_requested_context(str(context.abstract_syntax), context.transfer_syntax)
        return ae

    def _association(self) -> Association:
        with self._lock:
            if self._assoc is not None and self._assoc.is_established:
                return self._assoc
            ae = self._build_ae()
            ext_neg: list[Any] = []
            handlers: list[Any] = []
            if self.mode == "get":
                contexts = get_contexts(self.transfer_syntax_policy)
                classes = dict.fromkeys(str(c.abstract_syntax) for c in contexts)
                ext_neg = [build_role(uid, scp_role=True) for uid in classes]
                handlers = [(evt.EVT_C_STORE, self._on_c_store)]
            try:
                self._assoc = open_association(ae, self.peer, ext_neg=ext_neg, evt_handlers=handlers)
            except AssociationError as exc:
                raise RetrievalFailed(str(exc)) from None
            self._answered = False
            if self.mode == "get" and self.writer is not None:
                accel.set_store_handler(self._assoc, self.writer.store_handler(*self._store_hooks()))
            return self._assoc

    def _store_hooks(self) -> tuple[Any, None, Any]:
        """(on_stored, admit, on_failed) for the C-GET's stores."""
        return self.on_stored, None, self.on_failed

    def _on_c_store(self, event: evt.Event) -> int:
        assert self.writer is not None
        return self.writer.handle_c_store(event, *self._store_hooks())

    def drop(self) -> None:
        """Abort the association (after a failure, or to interrupt a transfer in flight)."""
        with self._lock:
            assoc, self._assoc = self._assoc, None
        if assoc is not None:
            if assoc.is_established:
                assoc.abort()
            # Wake a worker waiting for a response: pynetdicom's wait ends only
            # at the DIMSE timeout otherwise; (None, None) is what it reads then.
            with contextlib.suppress(AttributeError):
                assoc.dimse.msg_queue.put((None, None))

    def close(self) -> None:
        """Release the association politely."""
        with self._lock:
            assoc, self._assoc = self._assoc, None
        if assoc is not None and assoc.is_established:
            assoc.release()

    def _responses(
        self, send: Callable[[Association], Iterator[tuple[int | None, T]]], verb: str
    ) -> Iterator[tuple[int, T]]:
        """Yield (status, response) of the request *send* makes; raise RetrievalFailed saying why not."""
        assoc = self._association()
        waiting = time.monotonic()
        try:
            for status, response in send(assoc):
                if status is None:
                    raise RetrievalFailed(self._silence(assoc, verb, time.monotonic() - waiting))
                waiting = time.monotonic()
                self._answered = True
                yield status, response
        except RetrievalFailed:
            self.drop()
            raise
        except (RuntimeError, ValueError, OSError) as exc:
            self.drop()
            raise RetrievalFailed(f"{verb}: {exc}") from None

    def _silence(self, assoc: Association, verb: str, waited: float) -> str:
        """Say why a request got no response: the PACS sent nothing in time, or aborted.

        An abort on an association the PACS had answered on means it stopped
        or restarted; on a fresh one, most often that it does not know our AE title.

        The time waited decides first: when the DIMSE timeout passes,
        pynetdicom aborts the association itself, so a silent PACS would
        otherwise be reported as one that aborted.
        """
        if waited < 0.9 * self.timeout and self._answered:
            # It knew our AE title a moment ago: it stopped, restarted or lost the connection.
            return f"{verb}: the PACS aborted an association it had answered on (did it stop or restart?)"
        if waited < 0.9 * self.timeout:
            return (
                f"{verb}: the PACS aborted the association (a PACS does this to a calling AE title "
                f"it does not know: is {self.calling_aet!r} configured on it?)"
            )
        return f"{verb}: the PACS sent nothing for {self.timeout:g} s"

    def find(
        self, identifiers: Mapping[str, str], return_keys: Sequence[str], level: str = "STUDY"
    ) -> list[dict[str, str]]:
        """Return the C-FIND matches of *identifiers* at *level*, each as {keyword: text}, as sent.

        *level* is ``STUDY`` or ``SERIES`` (Study Root). At SERIES level the
        identifier should hold StudyInstanceUID: a value (hierarchical), or
        empty to match series of any study (relational). Matches are not
        de-duplicated here: some PACS answer once per instance.

        An identifier whose values are all ASCII goes as it always did, in the
        default character set; one with a value beyond ASCII declares
        SpecificCharacterSet ``ISO_IR 100`` (Latin-1), the set the planner
        (:mod:`niffler.cold_extraction.plan`) holds text cells to, so no
        character is sent as ``?``, a C-FIND wildcard.
        """
        if level not in ("STUDY", "SERIES"):
            raise ValueError(f"C-FIND level must be STUDY or SERIES, not {level!r}")
        query = Dataset()
        if not all(value.isascii() for value in identifiers.values()):
            query.SpecificCharacterSet = "ISO_IR 100"
        query.QueryRetrieveLevel = level
        for keyword in return_keys:
            setattr(query, keyword, "")
        for keyword, value in identifiers.items():
            setattr(query, keyword, value)

        taken = _TakenResponses()

        def send(a: Association) -> Iterator[tuple[int | None, Dataset | None]]:
            with taken.watching(a):
                for status, identifier in a.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
                    yield (int(status.Status) if status and "Status" in status else None), identifier

        matches: list[dict[str, str]] = []
        for code, identifier in self._responses(send, "C-FIND"):
            if code in PENDING:
                if identifier is not None:
                    matches.append({k: _text(identifier.get(k, "")) for k in return_keys})
            elif code != 0x0000:
                raise RetrievalFailed(f"C-FIND ended with status {describe_status(code)}")
        if taken.count:
            raise RetrievalFailed("C-FIND: pynetdicom's association loop took a response (its issue #875)")
        return matches

    def retrieve(
        self, uid: str | Sequence[str], level: str = "STUDY", study_uid: str = ""
    ) -> RetrieveResponse:
        """C-MOVE (to the move destination) or C-GET studies or series of one study; return the last response.

        At STUDY level *uid* names the studies; at SERIES level it names
        series of the one study *study_uid* (Study Root: the identifier holds
        QueryRetrieveLevel=SERIES, StudyInstanceUID and SeriesInstanceUID).
        Several go as one list of UIDs (PS3.4 C.2.2.2.2, list of UID matching
        on a unique key), so the PACS opens one association for all of them.
        """
        uids = [uid] if isinstance(uid, str) else list(uid)
        if not uids:
            raise ValueError("nothing to retrieve: no UID given")
        query = Dataset()
        query.QueryRetrieveLevel = level
        if level == "STUDY":
            query.StudyInstanceUID = uids[0] if len(uids) == 1 else uids
        elif level == "SERIES":
            if not study_uid:
                raise ValueError("a SERIES-level retrieval needs the series' StudyInstanceUID")
            query.StudyInstanceUID = study_uid
            query.SeriesInstanceUID = uids[0] if len(uids) == 1 else uids
        else:
            raise ValueError(f"retrieval level must be STUDY or SERIES, not {level!r}")

        model = (
            StudyRootQueryRetrieveInformationModelGet
            if self.mode == "get"
            else StudyRootQueryRetrieveInformationModelMove
        )
        destination = None if self.mode == "get" else self.move_destination

        def send(a: Association) -> Iterator[tuple[int | None, RetrieveResponse]]:
            for response in accel.send_retrieve(a, query, model, destination):
                yield response.status, response

        final: RetrieveResponse | None = None
        for code, response in self._responses(send, self.verb):
            if code not in PENDING:
                final = response
        if final is None or final.status is None:
            raise RetrievalFailed(f"{self.verb}: the PACS sent no final response")
        return final


def echo(peer: AEAddress, calling_aet: str, timeout: float = 10.0) -> str:
    """C-ECHO *peer*; return its status description or raise AssociationError saying what failed."""
    ae = new_requestor_ae(calling_aet, timeout)
    ae.add_requested_context(Verification)
    with associate(ae, peer) as assoc:
        status = assoc.send_c_echo()
    if not status or "Status" not in status:
        raise AssociationError(f"{peer} accepted the association but did not answer C-ECHO")
    code = int(status.Status)
    if code != 0x0000:
        raise AssociationError(f"{peer} answered C-ECHO with status {describe_status(code)}")
    return describe_status(code)
