"""C-FIND, C-MOVE and C-GET against the PACS, and the truth about what arrived.

A :class:`PacsSession` is one worker's association to the PACS, opened once
and reused for every row the worker serves (upstream spawned two dcm4che
processes, so two associations, per row). The association carries the
Study Root FIND and MOVE models, or FIND and GET plus the storage classes
(with the SCP role) for C-GET. When the PACS aborts, times out or the
socket breaks, the session drops the association and the next call opens a
fresh one.

Success is counted, not assumed. A study is retrieved only when its
C-MOVE/C-GET ends with status 0x0000, no sub-operation failed or warned,
the instances our Storage SCP wrote for that study equal the PACS's
completed sub-operations, and, when C-FIND reported
NumberOfStudyRelatedInstances, that count too (see :func:`verify_transfer`).
Nothing here logs identifiers: messages name statuses and counts.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom import AE, StoragePresentationContexts, build_role, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from niffler.common.dicomnet import (
    ACCEPTED_TRANSFER_SYNTAXES,
    AEAddress,
    InstanceWriter,
    NifflerAE,
    StoredInstance,
    associate,
    open_association,
)
from niffler.common.errors import AssociationError
from niffler.common.reactor import PENDING, RetrieveResponse, send_retrieve, set_store_handler

__all__ = [
    "CFIND_DETAILED_KEYS",
    "CFIND_ONLY_KEYS",
    "RESOLVE_KEYS",
    "PacsSession",
    "Receipts",
    "RetrievalFailed",
    "Study",
    "Transfer",
    "describe_status",
    "echo",
    "verify_transfer",
]

log = logging.getLogger(__name__)

#: Columns of cfind-output.csv in CFIND-ONLY mode (upstream's).
CFIND_ONLY_KEYS = ("PatientID", "StudyInstanceUID", "AccessionNumber", "StudyDescription")
#: Columns in CFIND-DETAILED mode: upstream's list, with a header that matches its rows.
CFIND_DETAILED_KEYS = (
    *CFIND_ONLY_KEYS,
    "StudyDate",
    "StudyTime",
    "DeviceSerialNumber",
    "ProtocolName",
    "PerformedProcedureStepDescription",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
    "AcquisitionDate",
)
#: What a retrieval needs back from C-FIND to resolve a row to studies.
RESOLVE_KEYS = ("PatientID", "StudyInstanceUID", "NumberOfStudyRelatedInstances")

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


@dataclass(frozen=True)
class Study:
    """A study a row resolved to, with what C-FIND said about it."""

    uid: str
    expected: int | None
    fields: Mapping[str, str]


@dataclass(frozen=True)
class Transfer:
    """The end of one C-MOVE / C-GET: final status, sub-operation counts and what we stored."""

    status: int
    completed: int | None
    failed: int | None
    warning: int | None
    received: int | None


def verify_transfer(transfer: Transfer, expected: int | None, verb: str = "C-MOVE") -> str | None:
    """Return why *transfer* did not retrieve the whole study, or None when it did.

    *received* is None when an external AE receives the files (DestAet): then
    only the PACS's own counts can be checked.
    """
    if transfer.status != 0x0000:
        failed = f"; {transfer.failed} sub-operation(s) failed" if transfer.failed else ""
        return f"{verb} ended with status {describe_status(transfer.status)}{failed}"
    if transfer.failed or transfer.warning:
        return (
            f"{verb} reported Success but {transfer.failed or 0} failed and "
            f"{transfer.warning or 0} warning sub-operation(s)"
        )
    counted = transfer.received is not None and transfer.completed is not None
    if counted and transfer.received != transfer.completed:
        return (
            f"received {transfer.received} instance(s) but the PACS reported "
            f"{transfer.completed} completed sub-operation(s)"
        )
    got = transfer.received if transfer.received is not None else transfer.completed
    if expected is not None and got is not None and got != expected:
        return f"retrieved {got} instance(s) but C-FIND reported NumberOfStudyRelatedInstances {expected}"
    if expected is not None and got is None:
        return "the PACS reported no sub-operation counts, so the study can not be verified"
    return None


class Receipts:
    """Counts the distinct instances our Storage SCP wrote, per study, for :func:`verify_transfer`.

    Shared by the workers of one run. Only studies in transfer are counted:
    :meth:`exclusive` starts a study's count at zero, serialises two rows
    that resolve to the same study so each move is counted on its own, and
    forgets the count when no worker holds the study any more. An instance
    the PACS sends twice counts once.

    It also hears of writes the disk refused (:meth:`on_failed`): when the
    disk is full, :attr:`disk_full` is set so the run stops asking for more.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[str, set[str]] = {}
        #: Per study in transfer: its lock and how many workers hold or wait for it.
        self._study_locks: dict[str, tuple[threading.Lock, int]] = {}
        self.instances = 0
        self.bytes = 0
        #: The operating system's reason for the last refused write (no identifiers).
        self.last_failure = ""
        self.disk_full = threading.Event()

    def on_failed(self, error: OSError) -> None:
        with self._lock:
            self.last_failure = error.strerror or type(error).__name__
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            self.disk_full.set()

    def on_stored(self, stored: StoredInstance) -> None:
        with self._lock:
            seen = self._seen.get(stored.study_uid)
            if seen is not None:
                seen.add(stored.sop_uid)
            self.instances += 1
            self.bytes += stored.size

    def count(self, study_uid: str) -> int:
        with self._lock:
            return len(self._seen.get(study_uid, ()))

    @contextlib.contextmanager
    def exclusive(self, study_uid: str) -> Iterator[None]:
        """Hold the study while it is transferred; its count starts again at zero.

        A study's lock is forgotten only when no worker holds or waits for it,
        so a third worker can never get a fresh lock while a second still
        waits on the first one's.
        """
        with self._lock:
            study_lock, users = self._study_locks.get(study_uid, (threading.Lock(), 0))
            self._study_locks[study_uid] = (study_lock, users + 1)
        try:
            with study_lock:
                with self._lock:
                    self._seen[study_uid] = set()
                yield
        finally:
            with self._lock:
                _, users = self._study_locks[study_uid]
                if users == 1:
                    del self._study_locks[study_uid]
                    self._seen.pop(study_uid, None)
                else:
                    self._study_locks[study_uid] = (study_lock, users - 1)

    @contextlib.contextmanager
    def exclusive_all(self, study_uids: Sequence[str]) -> Iterator[None]:
        """:meth:`exclusive` for several studies, taken in one order so two workers never deadlock."""
        with contextlib.ExitStack() as stack:
            for study_uid in sorted(set(study_uids)):
                stack.enter_context(self.exclusive(study_uid))
            yield


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple, MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value)


def _new_ae(calling_aet: str, timeout: float) -> AE:
    """Return an AE whose waits all end after *timeout* (association set-up after 30 s at most)."""
    ae = NifflerAE(ae_title=calling_aet)
    ae.acse_timeout = min(timeout, 30.0)
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    return ae


class PacsSession:
    """One worker's association to the PACS, reused across rows.

    *mode* is ``move``, ``get`` or a C-FIND-only mode. For ``get``, *writer*
    stores the instances arriving on the association. *receipts* counts
    what arrives (from our Storage SCP for ``move``); None when an external
    AE receives the files.
    """

    def __init__(
        self,
        *,
        peer: AEAddress,
        calling_aet: str,
        mode: str,
        timeout: float,
        move_destination: str = "",
        receipts: Receipts | None = None,
        writer: InstanceWriter | None = None,
    ) -> None:
        self.peer = peer
        self.calling_aet = calling_aet
        self.mode = mode
        self.timeout = timeout
        self.move_destination = move_destination or calling_aet
        self.receipts = receipts
        self.writer = writer
        self._assoc: Association | None = None
        self._lock = threading.Lock()

    @property
    def verb(self) -> str:
        """The retrieval this session does: ``C-GET`` or ``C-MOVE``."""
        return "C-GET" if self.mode == "get" else "C-MOVE"

    def _build_ae(self) -> AE:
        ae = _new_ae(self.calling_aet, self.timeout)
        ae.maximum_pdu_size = 0  # no limit: large PDUs for C-GET's incoming stores
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        if self.mode == "move":
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        elif self.mode == "get":
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
            for context in StoragePresentationContexts:
                ae.add_requested_context(str(context.abstract_syntax), ACCEPTED_TRANSFER_SYNTAXES)
        return ae

    def _association(self) -> Association:
        with self._lock:
            if self._assoc is not None and self._assoc.is_established:
                return self._assoc
            ae = self._build_ae()
            ext_neg: list[Any] = []
            handlers: list[Any] = []
            if self.mode == "get":
                ext_neg = [
                    build_role(str(c.abstract_syntax), scp_role=True) for c in StoragePresentationContexts
                ]
                handlers = [(evt.EVT_C_STORE, self._on_c_store)]
            try:
                self._assoc = open_association(ae, self.peer, ext_neg=ext_neg, evt_handlers=handlers)
            except AssociationError as exc:
                raise RetrievalFailed(str(exc)) from None
            if self.mode == "get" and self.writer is not None:
                set_store_handler(self._assoc, self.writer.store_handler(*self._store_hooks()))
            return self._assoc

    def _store_hooks(self) -> tuple[Any, None, Any]:
        """(on_stored, admit, on_failed) for the C-GET's stores."""
        if self.receipts is None:
            return None, None, None
        return self.receipts.on_stored, None, self.receipts.on_failed

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
                yield status, response
        except RetrievalFailed:
            self.drop()
            raise
        except (RuntimeError, ValueError, OSError) as exc:
            self.drop()
            raise RetrievalFailed(f"{verb}: {exc}") from None

    def _silence(self, assoc: Association, verb: str, waited: float) -> str:
        """Say why a request got no response: the PACS aborted, or sent nothing in time."""
        if assoc.is_aborted or assoc.acse.is_aborted() or waited < 0.9 * self.timeout:
            return (
                f"{verb}: the PACS aborted the association (a PACS does this to a calling AE title "
                f"it does not know: is {self.calling_aet!r} configured on it?)"
            )
        return f"{verb}: the PACS sent nothing for {self.timeout:g} s"

    def find(self, identifiers: Mapping[str, str], return_keys: Sequence[str]) -> list[dict[str, str]]:
        """Return the STUDY-level C-FIND matches of *identifiers*, each as {keyword: text}."""
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        for keyword in return_keys:
            setattr(query, keyword, "")
        for keyword, value in identifiers.items():
            setattr(query, keyword, value)

        def send(a: Association) -> Iterator[tuple[int | None, Dataset | None]]:
            for status, identifier in a.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
                yield (int(status.Status) if status and "Status" in status else None), identifier

        matches: list[dict[str, str]] = []
        for code, identifier in self._responses(send, "C-FIND"):
            if code in PENDING:
                if identifier is not None:
                    matches.append({k: _text(identifier.get(k, "")) for k in return_keys})
            elif code != 0x0000:
                raise RetrievalFailed(f"C-FIND ended with status {describe_status(code)}")
        return matches

    def transfer(self, study_uid: str | Sequence[str]) -> Transfer:
        """C-MOVE (to our receiver or DestAet) or C-GET one study, or several at once; return how it ended.

        Several studies go as one list of StudyInstanceUIDs (PS3.4 C.2.2.2.2,
        list of UID matching on a unique key), so the PACS opens one
        association for all of them; *received* is then their sum.
        """
        uids = [study_uid] if isinstance(study_uid, str) else list(study_uid)
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = uids[0] if len(uids) == 1 else uids

        model = (
            StudyRootQueryRetrieveInformationModelGet
            if self.mode == "get"
            else StudyRootQueryRetrieveInformationModelMove
        )
        destination = None if self.mode == "get" else self.move_destination

        def send(a: Association) -> Iterator[tuple[int | None, RetrieveResponse]]:
            for response in send_retrieve(a, query, model, destination):
                yield response.status, response

        final: RetrieveResponse | None = None
        for code, response in self._responses(send, self.verb):
            if code not in PENDING:
                final = response
        if final is None or final.status is None:
            raise RetrievalFailed(f"{self.verb}: the PACS sent no final response")
        return Transfer(
            status=final.status,
            completed=final.completed,
            failed=final.failed,
            warning=final.warning,
            received=sum(self.receipts.count(u) for u in uids) if self.receipts is not None else None,
        )


def echo(peer: AEAddress, calling_aet: str, timeout: float = 10.0) -> str:
    """C-ECHO *peer*; return its status description or raise AssociationError saying what failed."""
    ae = _new_ae(calling_aet, timeout)
    ae.add_requested_context(Verification)
    with associate(ae, peer) as assoc:
        status = assoc.send_c_echo()
    if not status or "Status" not in status:
        raise AssociationError(f"{peer} accepted the association but did not answer C-ECHO")
    code = int(status.Status)
    if code != 0x0000:
        raise AssociationError(f"{peer} answered C-ECHO with status {describe_status(code)}")
    return describe_status(code)
