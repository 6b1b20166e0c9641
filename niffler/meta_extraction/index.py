"""The receiver's crash-safe index of instances on disk (SQLite, WAL).

It is the source of truth for what was received, what is extracted and
what may be purged. Files are recorded by their pseudonymised SOP Instance
UID, so a resend updates a row instead of adding one, and the instance
count of a series is a count of distinct instances. Store writes are
idempotent upserts derived from this index: after a crash anything not
marked extracted is simply extracted again.

Instance states: ``received`` (on disk, not yet extracted), ``extracted``,
``failed`` (the header could not be read or the engine refused it: the
file is moved to ``.quarantine/<sop_key>.dcm`` under the storage folder,
kept, never purged) and
``purged`` (file deleted; the row stays so counts survive a resend).

The index holds paths under the storage folder, which (with the default
FilePath template) contain raw identifiers, so it lives in the private
StateFolder with the images' own level of protection.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["InstanceIndex", "Pending", "SeriesStats"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    sop_key     TEXT PRIMARY KEY,
    series_key  TEXT NOT NULL,
    path        TEXT NOT NULL,
    received_at REAL NOT NULL,
    mtime_ns    INTEGER NOT NULL,
    state       TEXT NOT NULL,
    error       TEXT
);
CREATE INDEX IF NOT EXISTS instances_state ON instances(state);
CREATE INDEX IF NOT EXISTS instances_series ON instances(series_key);
CREATE TABLE IF NOT EXISTS series (
    series_key     TEXT PRIMARY KEY,
    first_received REAL NOT NULL,
    last_received  REAL NOT NULL,
    documented     INTEGER NOT NULL DEFAULT 0
);
"""


@dataclass(frozen=True)
class Pending:
    """An instance waiting for extraction."""

    sop_key: str
    series_key: str
    path: str
    received_at: float


@dataclass(frozen=True)
class SeriesStats:
    """Per-series figures the documents carry."""

    instances: int
    first_received: float
    last_received: float


class InstanceIndex:
    """SQLite index of received instances; one connection, used by one thread."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        if readonly:
            self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)

    def record(self, items: Iterable[tuple[str, str, str, float, int]]) -> int:
        """Record arrivals (sop_key, series_key, relative path, received_at, mtime_ns); return how many."""
        rows = list(items)
        if not rows:
            return 0
        with self._db:
            self._db.executemany(
                """INSERT INTO instances (sop_key, series_key, path, received_at, mtime_ns, state)
                   VALUES (?, ?, ?, ?, ?, 'received')
                   ON CONFLICT(sop_key) DO UPDATE SET
                       series_key=excluded.series_key, path=excluded.path, received_at=excluded.received_at,
                       mtime_ns=excluded.mtime_ns, state='received', error=NULL""",
                rows,
            )
            self._db.executemany(
                """INSERT INTO series (series_key, first_received, last_received) VALUES (?, ?, ?)
                   ON CONFLICT(series_key) DO UPDATE SET
                       first_received=min(first_received, excluded.first_received),
                       last_received=max(last_received, excluded.last_received)""",
                [(series, at, at) for _, series, _, at, _ in rows],
            )
        return len(rows)

    def pending(self, limit: int) -> list[Pending]:
        """Return up to *limit* instances waiting for extraction, oldest first."""
        cursor = self._db.execute(
            "SELECT sop_key, series_key, path, received_at FROM instances WHERE state='received' "
            "ORDER BY rowid LIMIT ?",
            (limit,),
        )
        return [Pending(*row) for row in cursor]

    def mark(self, sop_keys: Iterable[str], state: str, error: str | None = None) -> None:
        with self._db:
            self._db.executemany(
                "UPDATE instances SET state=?, error=? WHERE sop_key=?",
                [(state, error, key) for key in sop_keys],
            )

    def quarantine(self, failures: Iterable[tuple[str, str, str]]) -> None:
        """Mark instances failed with their new path in quarantine: (sop_key, relative path, error)."""
        with self._db:
            self._db.executemany(
                "UPDATE instances SET state='failed', path=?, error=? WHERE sop_key=?",
                [(path, error, key) for key, path, error in failures],
            )

    def refuse(self, items: Iterable[tuple[str, str, float, int, str]]) -> None:
        """Record instances the receiver refused (sop_key, path, received_at, mtime_ns, error) as failed.

        They belong to no series: their bytes could not be read far enough to say.
        """
        with self._db:
            self._db.executemany(
                """INSERT INTO instances (sop_key, series_key, path, received_at, mtime_ns, state, error)
                   VALUES (?, '', ?, ?, ?, 'failed', ?)
                   ON CONFLICT(sop_key) DO UPDATE SET path=excluded.path, state='failed',
                       error=excluded.error""",
                [(key, path, at, mtime, error) for key, path, at, mtime, error in items],
            )

    def is_documented(self, series_key: str) -> bool:
        row = self._db.execute("SELECT documented FROM series WHERE series_key=?", (series_key,)).fetchone()
        return bool(row and row[0])

    def set_documented(self, series_keys: Iterable[str]) -> None:
        with self._db:
            self._db.executemany(
                "UPDATE series SET documented=1 WHERE series_key=?", [(k,) for k in series_keys]
            )

    def series_stats(self, series_keys: Iterable[str]) -> dict[str, SeriesStats]:
        out: dict[str, SeriesStats] = {}
        for key in set(series_keys):
            row = self._db.execute(
                "SELECT (SELECT count(*) FROM instances WHERE series_key=?), first_received, last_received "
                "FROM series WHERE series_key=?",
                (key, key),
            ).fetchone()
            if row:
                out[key] = SeriesStats(int(row[0]), float(row[1]), float(row[2]))
        return out

    def known_paths(self) -> set[str]:
        """Paths of files the index knows to be on disk."""
        return {row[0] for row in self._db.execute("SELECT path FROM instances WHERE state != 'purged'")}

    def purgeable(self, quiet_before: float) -> Iterator[tuple[str, str, int]]:
        """Yield (sop_key, path, recorded mtime_ns) of extracted files whose series is done and quiet.

        A series is done when none of its instances waits for extraction or
        failed it; quiet when nothing arrived for it since *quiet_before*.
        """
        yield from self._db.execute(
            """SELECT i.sop_key, i.path, i.mtime_ns FROM instances i JOIN series s USING (series_key)
               WHERE i.state = 'extracted' AND s.last_received < ?
                 AND NOT EXISTS (SELECT 1 FROM instances o WHERE o.series_key = i.series_key
                                 AND o.state IN ('received', 'failed'))""",
            (quiet_before,),
        ).fetchall()

    def counts(self) -> dict[str, int]:
        """Instances by state, plus series seen and series documented."""
        out = {state: 0 for state in ("received", "extracted", "failed", "purged")}
        out.update(dict(self._db.execute("SELECT state, count(*) FROM instances GROUP BY state").fetchall()))
        series, documented = self._db.execute(
            "SELECT count(*), coalesce(sum(documented), 0) FROM series"
        ).fetchone()
        out["series"], out["series_documented"] = int(series), int(documented)
        return out

    def close(self) -> None:
        self._db.close()
