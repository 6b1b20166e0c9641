"""Retrieve the targets of resolved rows: list moves, single moves with retries, the ledger per target.

A :class:`Fetcher` is shared by the workers of a run. For a batch of
resolved rows it skips targets done in an earlier run (ledger namespaces
``cold.studies`` and ``cold.series``), asks for up to ``StudiesPerMove`` of
the others in one C-MOVE / C-GET (studies together, or series of one study
together), keeps those that arrived whole (:func:`~niffler.cold_extraction.verdict.whole_in_list`),
and retrieves every other one on its own, with retries, until
:func:`~niffler.cold_extraction.verdict.verify_transfer` passes or the
retries run out. Every target ends as an :class:`Outcome`: the distinct
instances that arrived for it in this run, and why it failed, if it did.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from niffler.cold_extraction.report import Summary
from niffler.cold_extraction.resolve import Resolved
from niffler.cold_extraction.retrieve import Receipts, RetrievalFailed, Session
from niffler.cold_extraction.retry import Retrier, Stopped
from niffler.cold_extraction.verdict import (
    COUNT_KEY,
    UNIQUE_KEY,
    Target,
    Transfer,
    list_groups,
    verify_transfer,
    whole_in_list,
)
from niffler.common.ledger import Ledger, State

__all__ = ["NAMESPACES", "Fetcher", "Outcome", "Tally"]

log = logging.getLogger(__name__)

#: The ledger namespace of each level's targets.
NAMESPACES = {"STUDY": "cold.studies", "SERIES": "cold.series"}
#: List moves that brought no target whole before the run asks for one target per move.
_LIST_MISSES_TO_GIVE_UP = 2

Key = tuple[str, str]


@dataclass(frozen=True)
class Outcome:
    """How a target ended: distinct instances that arrived for it, and the error if it failed."""

    received: int
    error: str | None = None


class Tally:
    """Distinct instances per target retrieved in this run; settling a target again replaces its count."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[Key, int] = {}
        self.total = 0

    def settle(self, key: Key, count: int) -> None:
        with self._lock:
            self.total += count - self._counts.get(key, 0)
            self._counts[key] = count


class Fetcher:
    """Retrieves and verifies targets for every worker of one run."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        summary: Summary,
        retrier: Retrier,
        receipts: Receipts,
        per_move: int,
        storage: Path,
    ) -> None:
        self.ledger = ledger
        self.summary = summary
        self.retrier = retrier
        self.stop = retrier.stop
        self.receipts = receipts
        self.per_move = per_move
        self.storage = storage
        self.tally = Tally()
        self._lock = threading.Lock()
        self._list_misses = 0
        self._one_per_move = threading.Event()

    def fetch(self, session: Session, rows: Sequence[Resolved]) -> dict[Key, Outcome]:
        """Retrieve every target of *rows* not done earlier; map each target's key to its outcome.

        Raise :class:`Stopped` when the run stops (the rows stay pending).
        """
        outcomes: dict[Key, Outcome] = {}
        todo: dict[Key, tuple[Target, int]] = {}  # key -> (target, first line asking)
        for row in rows:
            for target in row.targets:
                if not target.uid:
                    outcomes[target.key] = Outcome(0, f"a C-FIND match has no {UNIQUE_KEY[target.level]}")
                    continue
                prior = self.ledger.get(NAMESPACES[target.level], target.uid)
                if prior is not None and prior.state is State.DONE:
                    outcomes[target.key] = Outcome(int(prior.detail.get("received") or 0))
                elif target.key not in todo:
                    todo[target.key] = (target, row.query.line)
        if session.receipts is not None and self.per_move > 1 and not self._one_per_move.is_set():
            for group in list_groups((target for target, _ in todo.values()), self.per_move):
                outcomes |= self._together(session, group)
        for key, (target, line) in todo.items():
            if key not in outcomes:
                outcomes[key] = self._alone(session, line, target)
        return outcomes

    def _done(self, target: Target, received: int) -> Outcome:
        self.ledger.mark_done(
            NAMESPACES[target.level], target.uid, {"expected": target.expected, "received": received}
        )
        self.tally.settle(target.key, received)
        self.receipts.forget(target.key)
        return Outcome(received)

    def _together(self, session: Session, targets: list[Target]) -> dict[Key, Outcome]:
        """One C-MOVE / C-GET of several targets; return those that arrived whole, marked done."""
        receipts = session.receipts
        assert receipts is not None
        if self.stop.is_set():
            raise Stopped
        with receipts.exclusive_all([t.key for t in targets]):
            self.summary.add(transfers=1)
            transfer: Transfer | None = None
            try:
                transfer = session.transfer(targets)
            except RetrievalFailed as exc:
                failure = str(exc)
            counts = {t.key: receipts.count(t.key) for t in targets}
        if transfer is not None:
            whole, problem = whole_in_list(transfer, targets, counts, session.verb)
        else:  # cut short: what arrived whole by its C-FIND count is still whole
            whole = [t for t in targets if t.expected is not None and counts[t.key] == t.expected]
            problem = failure
        done = {t.key: self._done(t, receipts.arrived(t.key)) for t in whole}
        self.stop_if_disk_full()
        if problem:
            log.info("a %s of %d %s: %s; %d arrived whole, the rest go one by one",
                     session.verb, len(targets), "studies" if targets[0].level == "STUDY" else "series",
                     problem, len(done))  # fmt: skip
        if not done and not self.stop.is_set():
            with self._lock:
                self._list_misses += 1
                give_up = self._list_misses == _LIST_MISSES_TO_GIVE_UP
            if give_up:
                self._one_per_move.set()
                log.warning("the PACS did not serve a %s of several studies or series: asking for one "
                            "at a time from now on", session.verb)  # fmt: skip
        return done

    def _alone(self, session: Session, line: int, target: Target) -> Outcome:
        """Retrieve and verify one target, with retries; its outcome (failed ones marked failed)."""
        receipts = session.receipts
        last: list[Transfer] = []

        def attempt() -> Transfer:
            self.summary.add(transfers=1)
            if receipts is None:
                transfer = session.transfer([target])
            else:
                with receipts.exclusive(target.key):
                    transfer = session.transfer([target])
            last.append(transfer)
            self.stop_if_disk_full()
            problem = verify_transfer(transfer, target.expected, session.verb, COUNT_KEY[target.level])
            if problem:
                raise RetrievalFailed(problem)
            return transfer

        try:
            transfer = self.retrier(line, attempt)
        except RetrievalFailed as exc:
            if receipts is not None:
                received = receipts.arrived(target.key)
            else:  # an external AE received them: the PACS's count is all we know
                received = (last[-1].completed or 0) if last else 0
            self.ledger.mark_failed(
                NAMESPACES[target.level],
                target.uid,
                str(exc),
                {"expected": target.expected, "received": received},
            )
            self.tally.settle(target.key, received)
            return Outcome(received, str(exc))
        if receipts is not None:
            return self._done(target, receipts.arrived(target.key))
        return self._done(target, transfer.completed or 0)

    def stop_if_disk_full(self) -> None:
        """Stop the run, leaving unfinished rows pending, once the storage disk refused a write as full.

        Retrying would only fill the log: every further instance is refused
        too. A rerun of the same command after space is freed carries on.
        """
        if not self.receipts.disk_full.is_set():
            return
        if self.summary.mark_disk_full():
            log.error(
                "the disk of %s is full (%s): stopping; rows not finished stay pending. "
                "Free space and run the same command again.",
                self.storage, self.receipts.last_failure,
            )  # fmt: skip
        self.stop.set()
        raise Stopped
