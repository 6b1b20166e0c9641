"""C-FIND, C-MOVE and C-GET against the PACS, and the count of what arrived.

A :class:`PacsSession` is one worker's association to the PACS
(:class:`niffler.net.scu.QueryRetrieveSession`), opened once and reused for
every row the worker serves (upstream spawned two dcm4che processes, so two
associations, per row), plus the :class:`Receipts` that count what arrives.

C-FIND matches are de-duplicated by the level's unique key
(:func:`distinct_matches`): pynetdicom's qrscp, for one, answers a
STUDY-level C-FIND with one match per instance. Whether a transfer brought
its target whole is :mod:`niffler.cold_extraction.verdict`'s call. Nothing
here logs identifiers: messages name statuses and counts.
"""

from __future__ import annotations

import contextlib
import errno
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from niffler.cold_extraction.verdict import UNIQUE_KEY, Target, Transfer
from niffler.net.scu import QueryRetrieveSession, RetrievalFailed, describe_status, echo
from niffler.net.writer import InstanceWriter, StoredInstance

__all__ = [
    "CFIND_DETAILED_KEYS",
    "CFIND_ONLY_KEYS",
    "RESOLVE_KEYS",
    "SERIES_RESOLVE_KEYS",
    "PacsSession",
    "Receipts",
    "RetrievalFailed",
    "Session",
    "describe_status",
    "distinct_matches",
    "echo",
]

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
#: What a retrieval needs back from a STUDY-level C-FIND to resolve a row to studies.
RESOLVE_KEYS = ("PatientID", "StudyInstanceUID", "NumberOfStudyRelatedInstances")
#: What it needs back from a SERIES-level C-FIND to resolve a row to series.
SERIES_RESOLVE_KEYS = ("StudyInstanceUID", "SeriesInstanceUID", "NumberOfSeriesRelatedInstances")

Key = tuple[str, str]


def distinct_matches(matches: Iterable[Mapping[str, str]], key: str) -> list[dict[str, str]]:
    """One match per value of *key*, in the order first seen.

    A later duplicate fills the fields the first one left empty (one PACS
    sends a count with one match and not with another). Matches without a
    *key* value are kept as they are: the run reports them as unusable.
    """
    by_uid: dict[str, dict[str, str]] = {}
    out: list[dict[str, str]] = []
    for match in matches:
        uid = (match.get(key) or "").strip()
        if not uid:
            out.append(dict(match))
            continue
        first = by_uid.get(uid)
        if first is None:
            first = by_uid[uid] = dict(match)
            out.append(first)
        else:
            for name, value in match.items():
                if value and not first.get(name):
                    first[name] = value
    return out


class Receipts:
    """Counts the distinct instances our receiver wrote, per study or series in transfer.

    Shared by the workers of one run; a target is keyed ``(level, uid)``.
    :meth:`exclusive` holds a target while it is transferred: its count for
    that transfer (:meth:`count`, which the verdict compares with the PACS's
    counts) starts at zero, and two rows resolving to the same target are
    serialised. Alongside, :meth:`arrived` counts the target's distinct
    instances over every transfer of this run (a list move, then retries),
    until :meth:`forget` drops them. An instance the PACS sends twice counts once.

    It also hears of writes the disk refused (:meth:`on_failed`): when the
    disk is full, :attr:`disk_full` is set so the run stops asking for more.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[Key, set[str]] = {}
        self._arrived: dict[Key, set[str]] = {}
        #: Per target in transfer: its lock and how many workers hold or wait for it.
        self._locks: dict[Key, tuple[threading.Lock, int]] = {}
        #: Every instance written, re-deliveries included (for MB/s, not for counts).
        self.deliveries = 0
        self.bytes = 0
        #: The operating system's reason for the last refused write (no identifiers).
        self.last_failure = ""
        self.disk_full = threading.Event()
        #: Called before a count is read, to take in instances reported but not yet handled
        #: (receiver processes report asynchronously; see niffler.net.fanout).
        self.sync: Callable[[], None] | None = None

    def on_failed(self, error: OSError) -> None:
        with self._lock:
            self.last_failure = error.strerror or type(error).__name__
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            self.disk_full.set()

    def on_stored(self, stored: StoredInstance) -> None:
        with self._lock:
            for key in (("STUDY", stored.study_uid), ("SERIES", stored.series_uid)):
                seen = self._seen.get(key)
                if seen is not None:
                    seen.add(stored.sop_uid)
                arrived = self._arrived.get(key)
                if arrived is not None:
                    arrived.add(stored.sop_uid)
            self.deliveries += 1
            self.bytes += stored.size

    def count(self, key: Key) -> int:
        """Distinct instances of *key* written during its current transfer."""
        if self.sync is not None:
            self.sync()
        with self._lock:
            return len(self._seen.get(key, ()))

    def arrived(self, key: Key) -> int:
        """Distinct instances of *key* written in this run, over all its transfers."""
        if self.sync is not None:
            self.sync()
        with self._lock:
            return len(self._arrived.get(key, ()))

    def forget(self, key: Key) -> None:
        """Drop what :meth:`arrived` remembers of *key* (it is done)."""
        with self._lock:
            if key not in self._locks:
                self._arrived.pop(key, None)

    @contextlib.contextmanager
    def exclusive(self, key: Key) -> Iterator[None]:
        """Hold the target while it is transferred; its count starts again at zero.

        A target's lock is forgotten only when no worker holds or waits for it,
        so a third worker can never get a fresh lock while a second still
        waits on the first one's.
        """
        with self._lock:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
            self._arrived.setdefault(key, set())
        try:
            with lock:
                with self._lock:
                    self._seen[key] = set()
                yield
        finally:
            with self._lock:
                _, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                    self._seen.pop(key, None)
                else:
                    self._locks[key] = (lock, users - 1)

    @contextlib.contextmanager
    def exclusive_all(self, keys: Sequence[Key]) -> Iterator[None]:
        """:meth:`exclusive` for several targets, taken in one order so two workers never deadlock."""
        with contextlib.ExitStack() as stack:
            for key in sorted(set(keys)):
                stack.enter_context(self.exclusive(key))
            yield


class Session(Protocol):
    """The transport seam: what one worker's session to the archive offers the run.

    :class:`PacsSession` (DIMSE: C-FIND, C-MOVE/C-GET) and
    :class:`~niffler.cold_extraction.dicomweb.DicomWebSession` (QIDO-RS,
    WADO-RS) are the two; resolving, the verdict, the ledger and the report
    see only this.
    """

    @property
    def receipts(self) -> Receipts | None:
        """Counts what arrives; None when an external AE receives the files."""

    @property
    def verb(self) -> str:
        """The retrieval, for messages: ``C-MOVE``, ``C-GET`` or ``WADO-RS``."""

    def find_distinct(
        self, identifiers: Mapping[str, str], return_keys: Sequence[str], level: str = "STUDY"
    ) -> list[dict[str, str]]:
        """The matches of *identifiers* at *level* (STUDY or SERIES), one per study or series."""

    def transfer(self, targets: Sequence[Target]) -> Transfer:
        """Retrieve the targets; how it ended and what was stored (see the verdict module)."""

    def drop(self) -> None:
        """Cut the connection (after a failure, or to interrupt a transfer in flight)."""

    def close(self) -> None:
        """Close the connection politely."""


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
        transfer_syntax_policy: str = "lossless",
    ) -> None:
        super().__init__(
            transfer_syntax_policy=transfer_syntax_policy,
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

    def find_distinct(
        self, identifiers: Mapping[str, str], return_keys: Sequence[str], level: str = "STUDY"
    ) -> list[dict[str, str]]:
        """C-FIND at *level*; one match per study (per series at SERIES level)."""
        return distinct_matches(self.find(identifiers, return_keys, level), UNIQUE_KEY[level])

    def transfer(self, targets: Sequence[Target]) -> Transfer:
        """Retrieve one target, or several of one level at once; return how it ended and what we stored.

        Several series must be of one study (:func:`~niffler.cold_extraction.verdict.list_groups`).
        """
        level = targets[0].level
        if any(t.level != level for t in targets) or (
            level == "SERIES" and any(t.study_uid != targets[0].study_uid for t in targets)
        ):
            raise ValueError("one transfer retrieves studies, or series of one study")
        uids = [t.uid for t in targets]
        final = self.retrieve(
            uids[0] if len(uids) == 1 else uids, level, targets[0].study_uid if level == "SERIES" else ""
        )
        return Transfer(
            status=final.status if final.status is not None else 0xC000,
            completed=final.completed,
            failed=final.failed,
            warning=final.warning,
            received=sum(self.receipts.count(t.key) for t in targets) if self.receipts is not None else None,
        )
