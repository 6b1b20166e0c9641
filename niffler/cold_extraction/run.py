"""One niffler-cold run: plan the CSV, serve its rows with N workers, report the truth.

The progress ledger (``.niffler-cold-progress.sqlite`` in StorageFolder) is
the record of what was retrieved: a row is ``done`` only when every study it
resolved to was retrieved and verified, a study is ``done`` only after
:func:`~niffler.cold_extraction.retrieve.verify_transfer` passed. Re-running
the same command skips done rows (and done studies of rows that failed
half-way); ``fresh`` forgets them. Rows still queued at Ctrl-C stay pending.

Workers are threads, each with its own reused association
(:class:`~niffler.cold_extraction.retrieve.PacsSession`); rows reach them
through a bounded queue, so a CSV of any length is planned lazily. At the
end ``retrieval-report.csv`` lists every CSV row (and ``cfind-output.csv``
the matches in the C-FIND-only modes). Both hold the identifiers the user
asked for: they belong with the retrieved files, not in a shared place.
Logs name line numbers and counts, never identifiers.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from tqdm import tqdm

from niffler.cold_extraction.config import ColdConfig
from niffler.cold_extraction.plan import Query, RowError, read_plan, seconds_until_window
from niffler.cold_extraction.retrieve import (
    CFIND_DETAILED_KEYS,
    CFIND_ONLY_KEYS,
    RESOLVE_KEYS,
    PacsSession,
    Receipts,
    RetrievalFailed,
    verify_transfer,
)
from niffler.common.errors import ConfigError
from niffler.common.ledger import Ledger, State
from niffler.common.notify import send_completion
from niffler.net import accel
from niffler.net.address import AEAddress
from niffler.net.scp import StorageSCP
from niffler.net.writer import InstanceWriter

__all__ = ["CFIND_OUTPUT", "LEDGER_NAME", "REPORT_NAME", "ColdRun", "Summary"]

log = logging.getLogger(__name__)

LEDGER_NAME = ".niffler-cold-progress.sqlite"
REPORT_NAME = "retrieval-report.csv"
CFIND_OUTPUT = "cfind-output.csv"
STUDIES = "cold.studies"
REPORT_COLUMNS = (
    "line", "status", "level", "query", "studies", "instances_expected", "instances_received",
    "attempts", "error",
)  # fmt: skip
_LOG_EVERY = 10.0
#: List moves that brought no study whole before the run asks for one study per move.
_LIST_MISSES_TO_GIVE_UP = 2

T = TypeVar("T")


class _Stopped(Exception):
    """The run is stopping (Ctrl-C, SIGTERM): leave the row pending."""


@dataclass
class _Resolved:
    """A row C-FIND resolved to studies, waiting for them to be retrieved."""

    query: Query
    detail: dict[str, Any]
    #: (StudyInstanceUID, NumberOfStudyRelatedInstances if the PACS said) per match.
    studies: list[tuple[str, int | None]]


@dataclass
class Summary:
    """What a run did, in counts (no identifiers)."""

    mode: str
    report: Path
    rows: int = 0
    retrieved: int = 0
    done_before: int = 0
    failed: int = 0
    invalid: int = 0
    duplicates: int = 0
    studies: int = 0
    #: C-MOVE / C-GET requests sent, each for one study or a list of them.
    transfers: int = 0
    instances: int = 0
    bytes: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    #: The run stopped because the storage folder's disk was full.
    disk_full: bool = False

    @property
    def ok(self) -> bool:
        return not (self.failed or self.invalid or self.interrupted or self.disk_full)

    def _in_transfers(self) -> str:
        if self.mode.startswith("cfind"):
            return ""
        return f" in {self.transfers} {'C-GET' if self.mode == 'get' else 'C-MOVE'}(s)"

    def describe(self) -> str:
        what = "matched" if self.mode.startswith("cfind") else "retrieved"
        rate = self.bytes / 1e6 / self.seconds if self.seconds else 0.0
        return (
            f"{self.rows} row(s): {self.retrieved} {what}, {self.failed} failed, {self.invalid} invalid, "
            f"{self.duplicates} duplicate, {self.done_before} done earlier"
            f"{' (interrupted)' if self.interrupted else ''}"
            f"{' (stopped: the storage disk is full)' if self.disk_full else ''}; {self.studies} stud(ies)"
            f"{self._in_transfers()}, {self.instances} instance(s), "
            f"{self.bytes / 1e6:.1f} MB in {self.seconds:.1f} s "
            f"({rate:.1f} MB/s)"
        )


@dataclass
class _Progress:
    """Rows, studies, instances and MB/s on a terminal bar, or a log line every 10 s."""

    total: int
    receipts: Receipts
    show: bool
    started: float = field(default_factory=time.monotonic)
    rows: int = 0
    studies: int = 0
    _next_log: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._bar = tqdm(total=self.total, unit="row", disable=not self.show, file=sys.stderr)
        self._next_log = self.started + _LOG_EVERY

    def advance(self, rows: int = 1, studies: int = 0) -> None:
        with self._lock:
            self.rows += rows
            self.studies += studies
            elapsed = max(time.monotonic() - self.started, 1e-9)
            rate = self.receipts.bytes / 1e6 / elapsed
            if not self._bar.disable:
                self._bar.set_postfix(
                    studies=self.studies, instances=self.receipts.instances, MBps=f"{rate:.1f}", refresh=False
                )
                self._bar.update(rows)
            elif time.monotonic() >= self._next_log:
                self._next_log = time.monotonic() + _LOG_EVERY
                log.info(
                    "rows %d/%d, studies %d, instances %d, %.1f MB/s",
                    self.rows, self.total, self.studies, self.receipts.instances, rate,
                )  # fmt: skip

    def close(self) -> None:
        self._bar.close()


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
        if not config.SrcAet:
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
        self.peer = AEAddress.parse(config.SrcAet, "SrcAet")
        self.query_aet = AEAddress.parse(config.QueryAet, "QueryAet")
        self.local_receiver = self.mode == "move" and config.DestAet.strip() in ("", self.query_aet.title)
        self.stop = threading.Event()
        self.receipts = Receipts()
        self.storage = config.StorageFolder
        self.ledger: Ledger | None = None
        self.summary = Summary(self.mode, self.storage / REPORT_NAME)
        self._summary_lock = threading.Lock()
        self._list_misses = 0
        self._one_study_per_move = threading.Event()

    # -- set-up -----------------------------------------------------------

    def _session(self, writer: InstanceWriter | None) -> PacsSession:
        counts = self.mode == "get" or self.local_receiver
        return PacsSession(
            peer=self.peer,
            calling_aet=self.query_aet.title,
            mode=self.mode,
            timeout=self.config.TimeoutSeconds,
            move_destination=self.config.DestAet.strip(),
            receipts=self.receipts if counts else None,
            writer=writer,
        )

    def _receiver(self) -> StorageSCP | None:
        if not self.local_receiver:
            if self.mode == "move":
                log.info("C-MOVE destination %s is external: no local receiver started", self.config.DestAet)
            return None
        return StorageSCP(
            self.storage,
            ae_title=self.query_aet.title,
            port=self.query_aet.port,
            file_path=self.config.FilePath,
            on_stored=self.receipts.on_stored,
            on_failed=self.receipts.on_failed,
        ).start()

    # -- the run ----------------------------------------------------------

    def run(self) -> Summary:
        """Serve every row; return the summary (``interrupted`` set after Ctrl-C)."""
        started = time.monotonic()
        total = sum(1 for _ in read_plan(self.csv_path, self.config))
        self.storage.mkdir(parents=True, exist_ok=True)
        with Ledger(self.storage / LEDGER_NAME) as ledger:
            self.ledger = ledger
            if self.fresh:
                ledger.reset(self.namespace)
                if self.namespace == "cold.rows":
                    ledger.reset(STUDIES)
            receiver = self._receiver()
            log.info("%s", accel.describe())
            progress = _Progress(total, self.receipts, self.show_progress)
            try:
                self._serve_all(progress)
            finally:
                progress.close()
                if receiver is not None:
                    receiver.stop(grace=1.0 if self.summary.interrupted else 5.0)
            self.summary.seconds = time.monotonic() - started
            self.summary.instances = self.receipts.instances
            self.summary.bytes = self.receipts.bytes
            self.write_outputs()
        self._notify()
        return self.summary

    def _serve_all(self, progress: _Progress) -> None:
        workers = self.config.MaxNifflerProcesses
        jobs: queue.Queue[Query | None] = queue.Queue(maxsize=2 * workers)
        writer = None
        if self.mode == "get":  # one writer for every C-GET association
            writer = InstanceWriter(self.storage, self.config.FilePath)
            writer.prepare()
        sessions = [self._session(writer) for _ in range(workers)]
        threads = [
            threading.Thread(target=self._work, args=(s, jobs, progress), name=f"cold-{i}", daemon=True)
            for i, s in enumerate(sessions)
        ]
        for thread in threads:
            thread.start()
        try:
            self._feed(jobs, progress)
            for _ in threads:
                self._put(jobs, None)
            for thread in threads:
                while thread.is_alive():
                    thread.join(0.2)
        except KeyboardInterrupt:
            log.warning("interrupted: stopping; rows not finished stay pending for the next run")
            self.summary.interrupted = True
            self.stop.set()
            for session in sessions:
                session.drop()
            with contextlib.suppress(queue.Empty):
                while True:
                    jobs.get_nowait()
            for _ in threads:
                with contextlib.suppress(queue.Full):
                    jobs.put_nowait(None)
            # A worker blocked in a transfer the abort cut short waits out its DIMSE
            # timeout; it marks nothing once stopped, so it is not waited for long.
            grace = time.monotonic() + 3.0
            for thread in threads:
                thread.join(max(0.0, grace - time.monotonic()))

    def _put(self, jobs: queue.Queue[Query | None], item: Query | None) -> None:
        while True:
            try:
                jobs.put(item, timeout=0.2)
                return
            except queue.Full:
                if self.stop.is_set():
                    return

    def _feed(self, jobs: queue.Queue[Query | None], progress: _Progress) -> None:
        assert self.ledger is not None
        seen: set[str] = set()
        for item in read_plan(self.csv_path, self.config):
            self.summary.rows += 1
            if isinstance(item, RowError):
                self.summary.invalid += 1
                log.warning("line %d skipped: %s", item.line, item.message)
                progress.advance()
            elif item.key in seen:
                self.summary.duplicates += 1
                log.info("line %d repeats an earlier row's query: served once", item.line)
                progress.advance()
            else:
                seen.add(item.key)
                entry = self.ledger.get(self.namespace, item.key)
                if entry is not None and entry.state is State.DONE:
                    self.summary.done_before += 1
                    progress.advance()
                else:
                    self._put(jobs, item)

    def _work(self, session: PacsSession, jobs: queue.Queue[Query | None], progress: _Progress) -> None:
        """Serve rows until the end marker: resolve each, then retrieve their studies together.

        Resolved rows wait while the queue has more and their studies are
        fewer than StudiesPerMove, so one C-MOVE can fetch several rows' studies.
        """
        waiting: list[_Resolved] = []
        try:
            while (query := jobs.get()) is not None:
                if not self.stop.is_set():
                    resolved = self._resolve(session, query, progress)
                    if resolved is not None:
                        waiting.append(resolved)
                pending = sum(len(r.studies) for r in waiting)
                if waiting and (pending >= self.config.StudiesPerMove or jobs.empty()):
                    self._retrieve_rows(session, waiting, progress)
                    waiting = []
            if waiting:
                self._retrieve_rows(session, waiting, progress)
        finally:
            session.close()

    def _count(self, **changes: int) -> None:
        with self._summary_lock:
            for name, value in changes.items():
                setattr(self.summary, name, getattr(self.summary, name) + value)

    def _row_failed(self, query: Query, error: str, detail: dict[str, Any]) -> None:
        assert self.ledger is not None
        self.ledger.mark_failed(self.namespace, query.key, error, detail)
        self._count(failed=1)
        log.warning("line %d failed: %s", query.line, error)

    def _resolve(self, session: PacsSession, query: Query, progress: _Progress) -> _Resolved | None:
        """C-FIND one row; finish it unless studies remain to retrieve (then return them)."""
        assert self.ledger is not None
        detail: dict[str, Any] = {"line": query.line}
        try:
            self._wait_for_window()
            matches = self._attempt(query.line, lambda: session.find(query.identifiers, self.return_keys))
        except _Stopped:
            return None
        except RetrievalFailed as exc:
            self._row_failed(query, str(exc), detail)
            progress.advance()
            return None
        except Exception:  # one row must never end the run
            log.exception("line %d: unexpected error", query.line)
            self._row_failed(query, "unexpected error (see the log)", detail)
            progress.advance()
            return None
        detail["studies"] = len(matches)
        if self.mode.startswith("cfind"):
            self.ledger.mark_done(self.namespace, query.key, {**detail, "matches": matches})
            self._count(retrieved=1, studies=len(matches))
            progress.advance(studies=len(matches))
            return None
        if not matches:
            self._row_failed(query, "no study matched the query", detail)
            progress.advance()
            return None
        studies = [
            (m.get("StudyInstanceUID", ""), _int_or_none(m.get("NumberOfStudyRelatedInstances", "")))
            for m in matches
        ]
        return _Resolved(query, detail, studies)

    def _retrieve_rows(self, session: PacsSession, rows: list[_Resolved], progress: _Progress) -> None:
        """Retrieve the studies of resolved rows, then finish each row; rows stay pending on stop."""
        try:
            outcomes = self._retrieve_studies(session, rows)
        except _Stopped:
            return
        except Exception:  # one batch must never end the run
            log.exception("lines %s: unexpected error", ", ".join(str(r.query.line) for r in rows))
            for row in rows:
                self._row_failed(row.query, "unexpected error (see the log)", row.detail)
                progress.advance()
            return
        for row in rows:
            errors, expected_total, received_total = [], 0, 0
            for uid, expected in row.studies:
                expected_total += expected or 0
                outcome = outcomes[uid]
                if isinstance(outcome, str):
                    errors.append(outcome)
                else:
                    received_total += outcome
            row.detail.update(expected=expected_total, received=received_total)
            self._count(studies=len(row.studies))
            if errors:
                self._row_failed(
                    row.query,
                    f"{len(errors)} of {len(row.studies)} stud(ies) not retrieved; first: {errors[0]}",
                    row.detail,
                )
            else:
                assert self.ledger is not None
                self.ledger.mark_done(self.namespace, row.query.key, row.detail)
                self._count(retrieved=1)
            progress.advance(studies=len(row.studies))

    def _retrieve_studies(self, session: PacsSession, rows: list[_Resolved]) -> dict[str, int | str]:
        """Retrieve every study of *rows* not done earlier; map each to its instance count or its error.

        Studies whose expected count C-FIND reported go StudiesPerMove to a
        C-MOVE; each is done when exactly that many of its instances arrived.
        Any the list move did not bring whole is then retrieved on its own,
        with the usual retries and checks (:meth:`_study`).
        """
        assert self.ledger is not None
        outcomes: dict[str, int | str] = {}
        todo: dict[str, tuple[int, int | None]] = {}  # uid -> (first line asking, expected)
        for row in rows:
            for uid, expected in row.studies:
                if not uid:
                    outcomes[uid] = "a C-FIND match has no StudyInstanceUID"
                    continue
                prior = self.ledger.get(STUDIES, uid)
                if prior is not None and prior.state is State.DONE:
                    outcomes[uid] = int(prior.detail.get("received") or 0)
                elif uid not in todo:
                    todo[uid] = (row.query.line, expected)
        listed = [uid for uid, (_, expected) in todo.items() if expected is not None]
        size = self.config.StudiesPerMove
        if session.receipts is not None and size > 1 and not self._one_study_per_move.is_set():
            for chunk in (listed[start : start + size] for start in range(0, len(listed), size)):
                if len(chunk) > 1:
                    outcomes |= self._retrieve_together(session, chunk, todo)
        for uid, (line, expected) in todo.items():
            if uid not in outcomes:
                try:
                    outcomes[uid] = self._study(session, line, uid, expected)
                except RetrievalFailed as exc:
                    outcomes[uid] = str(exc)
        return outcomes

    def _retrieve_together(
        self, session: PacsSession, uids: list[str], todo: dict[str, tuple[int, int | None]]
    ) -> dict[str, int | str]:
        """One C-MOVE / C-GET of several studies; return those that arrived whole, marked done."""
        assert self.ledger is not None and session.receipts is not None
        if self.stop.is_set():
            raise _Stopped
        with session.receipts.exclusive_all(uids):
            self._count(transfers=1)
            try:
                transfer = session.transfer(uids)
                problem = verify_transfer(transfer, None, session.verb)
            except RetrievalFailed as exc:
                problem = str(exc)
            counts = {uid: session.receipts.count(uid) for uid in uids}
        whole: dict[str, int | str] = {}
        for uid, count in counts.items():
            if count == todo[uid][1]:
                self.ledger.mark_done(STUDIES, uid, {"expected": count, "received": count})
                whole[uid] = count
        self._stop_if_disk_full()
        if problem:
            log.info("a %s of %d studies: %s; %d arrived whole, the rest go one by one",
                     session.verb, len(uids), problem, len(whole))  # fmt: skip
        if not whole and not self.stop.is_set():
            with self._summary_lock:
                self._list_misses += 1
                give_up = self._list_misses == _LIST_MISSES_TO_GIVE_UP
            if give_up:
                self._one_study_per_move.set()
                log.warning("the PACS did not serve a %s of several studies: asking for one study "
                            "at a time from now on", session.verb)  # fmt: skip
        return whole

    def _study(self, session: PacsSession, line: int, study_uid: str, expected: int | None) -> int:
        """Retrieve and verify one study; return its instance count."""
        assert self.ledger is not None

        def attempt() -> int:
            self._count(transfers=1)
            if session.receipts is None:
                transfer = session.transfer(study_uid)
            else:
                with session.receipts.exclusive(study_uid):
                    transfer = session.transfer(study_uid)
            self._stop_if_disk_full()
            problem = verify_transfer(transfer, expected, session.verb)
            if problem:
                raise RetrievalFailed(problem)
            return transfer.received if transfer.received is not None else transfer.completed or 0

        try:
            received = self._attempt(line, attempt)
        except RetrievalFailed as exc:
            self.ledger.mark_failed(STUDIES, study_uid, str(exc), {"expected": expected})
            raise
        self.ledger.mark_done(STUDIES, study_uid, {"expected": expected, "received": received})
        return received

    def _stop_if_disk_full(self) -> None:
        """Stop the run, leaving unfinished rows pending, once the storage disk refused a write as full.

        Retrying would only fill the log: every further instance is refused
        too. A rerun of the same command after space is freed carries on.
        """
        if not self.receipts.disk_full.is_set():
            return
        with self._summary_lock:
            first = not self.summary.disk_full
            self.summary.disk_full = True
        if first:
            log.error(
                "the disk of %s is full (%s): stopping; rows not finished stay pending. "
                "Free space and run the same command again.",
                self.storage, self.receipts.last_failure,
            )  # fmt: skip
        self.stop.set()
        raise _Stopped

    def _attempt(self, line: int, call: Callable[[], T]) -> T:
        """Run *call*, retrying a RetrievalFailed with doubling delays; raise _Stopped on stop."""
        retries = self.config.Retries
        for attempt in range(retries + 1):
            if self.stop.is_set():
                raise _Stopped
            try:
                return call()
            except RetrievalFailed as exc:
                if self.stop.is_set():
                    raise _Stopped from None
                if attempt == retries:
                    if retries:
                        raise RetrievalFailed(f"{exc} (after {retries + 1} attempts)") from None
                    raise
                delay = self.config.RetryDelaySeconds * 2**attempt
                log.warning("line %d: %s; retry %d of %d in %.1f s", line, exc, attempt + 1, retries, delay)
                if self.stop.wait(delay):
                    raise _Stopped from None
        raise AssertionError("unreachable")

    def _wait_for_window(self) -> None:
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
        raise _Stopped

    # -- outputs ----------------------------------------------------------

    def write_outputs(self) -> None:
        """Write retrieval-report.csv (and cfind-output.csv) from the CSV and the ledger."""
        assert self.ledger is not None
        report_tmp = self.summary.report.with_suffix(".csv.part")
        find_rows = self.mode.startswith("cfind")
        output = self.storage / CFIND_OUTPUT
        output_tmp = output.with_suffix(".csv.part")
        written: set[str] = set()
        first_line: dict[str, int] = {}
        with (
            open(report_tmp, "w", newline="", encoding="utf-8") as report_handle,
            (
                open(output_tmp, "w", newline="", encoding="utf-8") if find_rows else contextlib.nullcontext()
            ) as output_handle,
        ):
            report = csv.writer(report_handle)
            report.writerow(REPORT_COLUMNS)
            matches = csv.writer(output_handle) if output_handle is not None else None
            if matches is not None:
                matches.writerow(self.return_keys)
            for item in read_plan(self.csv_path, self.config):
                if isinstance(item, RowError):
                    report.writerow([item.line, "invalid", "", "", "", "", "", "", item.message])
                    continue
                entry = self.ledger.get(self.namespace, item.key)
                query = json.dumps(item.identifiers, sort_keys=True)
                if item.key in first_line:
                    report.writerow([item.line, "duplicate", item.level, query, "", "", "", "",
                                     f"same query as line {first_line[item.key]}"])  # fmt: skip
                    continue
                first_line[item.key] = item.line
                if entry is None:
                    report.writerow([item.line, "not-attempted", item.level, query, "", "", "", 0, ""])
                    continue
                d = entry.detail
                status = {"pending": "not-finished"}.get(entry.state.value, entry.state.value)
                report.writerow([
                    item.line, status, item.level, query, d.get("studies", ""), d.get("expected", ""),
                    d.get("received", ""), entry.attempts, entry.last_error or "",
                ])  # fmt: skip
                if matches is not None and entry.state is State.DONE:
                    for match in d.get("matches", []):
                        uid = match.get("StudyInstanceUID", "")
                        if uid not in written:
                            written.add(uid)
                            matches.writerow([match.get(k, "") for k in self.return_keys])
        report_tmp.replace(self.summary.report)
        if find_rows:
            output_tmp.replace(output)

    def _notify(self) -> None:
        if not self.config.SendEmail or not self.config.YourEmail:
            return
        verdict = "completed" if self.summary.ok else "finished with failures"
        send_completion(
            self.config.YourEmail,
            f"Niffler cold extraction {self.config.NifflerID} {verdict}",
            f"{self.summary.describe()}\n\nReport: {self.summary.report}\n",
        )


def _int_or_none(text: str) -> int | None:
    text = (text or "").strip()
    return int(text) if text.isdigit() else None
