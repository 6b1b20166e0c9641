"""C-FIND, C-MOVE and C-GET against the PACS, and the truth about what arrived.

A :class:`PacsSession` is one worker's association to the PACS
(:class:`niffler.net.scu.QueryRetrieveSession`), opened once and reused for
every row the worker serves (upstream spawned two dcm4che processes, so two
associations, per row), plus the :class:`Receipts` that count what arrives.

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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from niffler.net.scu import QueryRetrieveSession, RetrievalFailed, describe_status, echo
from niffler.net.writer import InstanceWriter, StoredInstance

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


class PacsSession(QueryRetrieveSession):
    """One worker's association to the PACS and the receipts of what arrived.

    *receipts* counts what arrives (from our Storage SCP for ``move``, on the
    association for ``get``); None when an external AE receives the files.
    """

    def __init__(
        self,
        *,
        peer: Any,
        calling_aet: str,
        mode: str,
        timeout: float,
        move_destination: str = "",
        receipts: Receipts | None = None,
        writer: InstanceWriter | None = None,
    ) -> None:
        super().__init__(
            peer=peer,
            calling_aet=calling_aet,
            mode=mode,
            timeout=timeout,
            move_destination=move_destination,
            writer=writer,
            on_stored=receipts.on_stored if receipts is not None else None,
            on_failed=receipts.on_failed if receipts is not None else None,
        )
        self.receipts = receipts

    def transfer(self, study_uid: str | Sequence[str]) -> Transfer:
        """Retrieve one study, or several at once; return how it ended and what we stored."""
        uids = [study_uid] if isinstance(study_uid, str) else list(study_uid)
        final = self.retrieve(uids[0] if len(uids) == 1 else uids)
        return Transfer(
            status=final.status if final.status is not None else 0xC000,
            completed=final.completed,
            failed=final.failed,
            warning=final.warning,
            received=sum(self.receipts.count(u) for u in uids) if self.receipts is not None else None,
        )
