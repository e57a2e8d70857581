"""SQLite in WAL mode, one connection per thread, explicit write transactions, and numbered
migrations for files an earlier version created."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from meshkit import tracing

BUSY_TIMEOUT_MS = 10_000
_WAL_RETRY_S = 0.02
#: Each connection's private page cache. SQLite's default (2 MiB) fills as a connection reads
#: more of a growing file, and a server has one connection per worker thread: 32 x 2 MiB per
#: process after a long run. The calls here are point lookups of a few B-tree pages, which a
#: miss re-reads from the OS page cache in microseconds.
PAGE_CACHE_KIB = 256


def _enter_wal(conn: sqlite3.Connection) -> None:
    """Puts the file in WAL mode (a no-op once it is).

    Switching a new file needs an exclusive lock, and SQLite answers "database is locked" at
    once, without waiting out busy_timeout, when another process is opening the same file at
    that moment (payment v1 and v2 share one and start together: seen as one of them exiting
    at start-up). So the switch is tried again for as long as busy_timeout would have waited.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() >= deadline:
                raise
            time.sleep(_WAL_RETRY_S)


class Database:
    """A SQLite file shared by this process's threads (and possibly other processes).

    Writers use ``BEGIN IMMEDIATE`` so the write lock is taken up front: a
    read-then-write transaction can then never fail half-way with SQLITE_BUSY,
    and concurrent writers queue on ``busy_timeout`` instead.
    """

    def __init__(self, path: Path, schema: str, migrations: Sequence[str] = ()) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        # One span per write transaction (reads are single statements, cheap and many).
        self._span_name = f"sqlite write {path.name}"
        self._span_attributes = {"db.system.name": "sqlite", "db.namespace": path.name}
        # executescript manages its own transaction; schemas use IF NOT EXISTS so every
        # process (payment v1 and v2 share a file) can run it at start-up.
        self._connect().executescript(schema)
        self._migrate(migrations)

    def _migrate(self, migrations: Sequence[str]) -> None:
        """Brings the file up to ``len(migrations)``, running each script once, in order.

        ``schema`` is the first version of the tables and ``migrations[i]`` takes a file from
        version ``i`` to ``i + 1`` (PRAGMA user_version records where a file is), so a file made
        by an earlier release gets the same columns as a new one. Every script runs in one write
        transaction with the version bump: processes starting together on one file queue on the
        write lock, and the second finds the work done. Written here rather than taken from
        alembic or yoyo: those bring SQLAlchemy or a migrations directory per service for what
        is a list of ALTER TABLE statements.
        """
        if not migrations:
            return
        with self.write() as conn:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version > len(migrations):
                raise RuntimeError(
                    f"{self.path} is at schema version {version}; this release knows"
                    f" {len(migrations)}: it was written by a newer one"
                )
            for number in range(version, len(migrations)):
                for statement in _statements(migrations[number]):
                    conn.execute(statement)
            # PRAGMA takes no parameters; the number is ours.
            conn.execute(f"PRAGMA user_version = {len(migrations)}")

    def _connect(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves. Each connection is used only
            # by the thread that made it; check_same_thread=False only lets close() reach them.
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            _enter_wal(conn)
            # NORMAL is durable across process crashes in WAL mode (only an OS crash can lose
            # the last transactions), which is the failure model of this project.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute(f"PRAGMA cache_size=-{PAGE_CACHE_KIB}")  # negative: KiB, not pages
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: commits on success, rolls back on any exception."""
        conn = self._connect()
        with tracing.span(self._span_name, self._span_attributes):
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def read(self) -> sqlite3.Connection:
        """A connection for single-statement reads (autocommit, WAL snapshot per statement)."""
        return self._connect()

    def close(self) -> None:
        """Closes every thread's connection (call after the server has stopped)."""
        with self._all_lock:
            connections, self._all = self._all, []
        for conn in connections:
            conn.close()
        self._local = threading.local()

    def ping(self) -> None:
        """Health check: the file is reachable and answers a query."""
        self._connect().execute("SELECT 1").fetchone()


def _statements(script: str) -> list[str]:
    """A migration's statements, one by one: executescript would commit the open transaction."""
    statements: list[str] = []
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    if pending.strip():
        raise ValueError(f"incomplete SQL statement in a migration: {pending.strip()!r}")
    return statements
