"""Crash-safe progress ledger on SQLite (WAL), replacing upstream's pickles.

Upstream saved progress in pickles every 10 minutes, so a crash lost up to 10
minutes of bookkeeping and a failed move was marked done. Here every state
change is its own SQLite transaction in WAL mode: a process killed at any
instant (kill -9 included) leaves the ledger at the last committed change,
never corrupt and never half-written. ``synchronous=NORMAL`` keeps that
guarantee for process crashes; on power loss the last few changes may be
rolled back (so work is redone, never skipped).

An entry is a key within a namespace (``cold.rows``, ``meta.series``...) with
a state (pending, done, failed), an attempt count, the last error, a JSON
detail and timestamps.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from niffler.common.errors import LedgerError

__all__ = ["Entry", "Ledger", "State"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    namespace  TEXT NOT NULL,
    key        TEXT NOT NULL,
    state      TEXT NOT NULL CHECK (state IN ('pending', 'done', 'failed')),
    attempts   INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    detail     TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (namespace, key)
);
CREATE INDEX IF NOT EXISTS entries_state ON entries (namespace, state);
"""
_COLUMNS = "namespace, key, state, attempts, last_error, detail, created_at, updated_at"


class State(str, Enum):
    """The state of one ledger entry."""

    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class Entry:
    """One ledger entry as last committed."""

    namespace: str
    key: str
    state: State
    attempts: int
    last_error: str | None
    detail: dict[str, Any]
    created_at: float
    updated_at: float


def _entry(row: tuple[Any, ...]) -> Entry:
    ns, key, state, attempts, error, detail, created, updated = row
    return Entry(ns, key, State(state), attempts, error, json.loads(detail or "{}"), created, updated)


class Ledger:
    """A thread-safe progress ledger stored in one SQLite file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise LedgerError(f"cannot open progress ledger {self.path}: {exc}") from None
        self._lock = threading.Lock()

    def _write(self, sql: str, rows: Iterable[tuple[Any, ...]]) -> None:
        try:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._db.executemany(sql, rows)
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot write progress ledger {self.path}: {exc}") from None

    def add(self, namespace: str, keys: Iterable[str]) -> None:
        """Record *keys* as pending unless they are already known."""
        now = time.time()
        self._write(
            "INSERT OR IGNORE INTO entries (namespace, key, state, created_at, updated_at) "
            "VALUES (?, ?, 'pending', ?, ?)",
            ((namespace, key, now, now) for key in keys),
        )

    def mark_done(self, namespace: str, key: str, detail: dict[str, Any] | None = None) -> None:
        """Record *key* as done (creating it if needed), keeping its attempt count."""
        self._set(namespace, key, State.DONE, None, detail)

    def mark_failed(self, namespace: str, key: str, error: str, detail: dict[str, Any] | None = None) -> None:
        """Record a failed attempt at *key* with its error."""
        self._set(namespace, key, State.FAILED, error, detail)

    def mark_pending(self, namespace: str, key: str, detail: dict[str, Any] | None = None) -> None:
        """Record *key* as pending again (e.g. new data arrived for a series)."""
        self._set(namespace, key, State.PENDING, None, detail, count_attempt=False)

    def _set(
        self,
        namespace: str,
        key: str,
        state: State,
        error: str | None,
        detail: dict[str, Any] | None,
        count_attempt: bool = True,
    ) -> None:
        now = time.time()
        encoded = json.dumps(detail, sort_keys=True) if detail is not None else None
        bump = 1 if count_attempt else 0
        self._write(
            "INSERT INTO entries "
            "(namespace, key, state, attempts, last_error, detail, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (namespace, key) DO UPDATE SET state = excluded.state, "
            "attempts = entries.attempts + ?, last_error = excluded.last_error, "
            "detail = COALESCE(excluded.detail, entries.detail), updated_at = excluded.updated_at",
            [(namespace, key, state.value, bump, error, encoded, now, now, bump)],
        )

    def mark_many(
        self, namespace: str, changes: Iterable[tuple[str, State, str | None, dict[str, Any] | None]]
    ) -> None:
        """Record many (key, state, error, detail) changes in one transaction (one commit, not N)."""
        now = time.time()
        self._write(
            "INSERT INTO entries "
            "(namespace, key, state, attempts, last_error, detail, created_at, updated_at) "
            "VALUES (?, ?, ?, 1, ?, ?, ?, ?) "
            "ON CONFLICT (namespace, key) DO UPDATE SET state = excluded.state, "
            "attempts = entries.attempts + 1, last_error = excluded.last_error, "
            "detail = COALESCE(excluded.detail, entries.detail), updated_at = excluded.updated_at",
            [
                (namespace, key, state.value, error,
                 json.dumps(detail, sort_keys=True) if detail is not None else None, now, now)
                for key, state, error, detail in changes
            ],
        )  # fmt: skip

    def requeue(self, namespace: str, state: State) -> int:
        """Set every entry of *namespace* in *state* back to pending; return how many."""
        with self._lock:
            count = self._db.execute(
                "SELECT COUNT(*) FROM entries WHERE namespace = ? AND state = ?", (namespace, state.value)
            ).fetchone()[0]
        self._write(
            "UPDATE entries SET state = 'pending', updated_at = ? WHERE namespace = ? AND state = ?",
            [(time.time(), namespace, state.value)],
        )
        return int(count)

    def stream(self, namespace: str, state: State | None = None, page: int = 1000) -> Iterator[Entry]:
        """Yield the entries of *namespace* (optionally in one *state*) in key order, a page at a time.

        Each page is its own short query (keyset pagination), so memory stays
        flat however many entries there are, no read snapshot is held open,
        and the ledger can be written meanwhile: an entry whose state changes
        before its page is read is seen in its new state.
        """
        where = "WHERE namespace = ? AND key > ?" + (" AND state = ?" if state is not None else "")
        query = f"SELECT {_COLUMNS} FROM entries {where} ORDER BY key LIMIT ?"  # noqa: S608 - fixed clauses
        last = ""
        while True:
            params: list[Any] = [namespace, last]
            if state is not None:
                params.append(state.value)
            rows = list(self._query_rows(query, (*params, page)))
            if not rows:
                return
            last = rows[-1][1]
            yield from map(_entry, rows)

    def get(self, namespace: str, key: str) -> Entry | None:
        """Return the entry for *key*, or None if it was never recorded."""
        rows = list(self._query("WHERE namespace = ? AND key = ?", (namespace, key)))
        return rows[0] if rows else None

    def entries(self, namespace: str, state: State | None = None) -> Iterator[Entry]:
        """Yield the entries of *namespace* (optionally in one *state*), oldest first."""
        if state is None:
            return self._query("WHERE namespace = ? ORDER BY created_at, key", (namespace,))
        return self._query(
            "WHERE namespace = ? AND state = ? ORDER BY created_at, key", (namespace, state.value)
        )

    def counts(self, namespace: str) -> dict[State, int]:
        """Return how many entries of *namespace* are in each state."""
        with self._lock:
            rows = self._db.execute(
                "SELECT state, COUNT(*) FROM entries WHERE namespace = ? GROUP BY state", (namespace,)
            ).fetchall()
        found = {State(state): count for state, count in rows}
        return {state: found.get(state, 0) for state in State}

    def reset(self, namespace: str) -> None:
        """Forget every entry of *namespace* (``--fresh``)."""
        self._write("DELETE FROM entries WHERE namespace = ?", [(namespace,)])

    def _query(self, where: str, params: tuple[Any, ...]) -> Iterator[Entry]:
        query = f"SELECT {_COLUMNS} FROM entries {where}"  # noqa: S608 - fixed clauses, bound values
        yield from map(_entry, self._query_rows(query, params))

    def _query_rows(self, query: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        try:
            with self._lock:
                return list(self._db.execute(query, params).fetchall())
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot read progress ledger {self.path}: {exc}") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
