"""Every thread's connection is set up alike: WAL, NORMAL sync, foreign keys, a bounded cache."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from meshkit.sqlite import PAGE_CACHE_KIB, Database, _enter_wal


def test_each_threads_connection_has_the_same_pragmas(tmp_path: Path) -> None:
    db = Database(tmp_path / "x.db", "CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY);")
    seen: list[tuple[object, ...]] = []

    def read_pragmas() -> None:
        conn = db.read()
        pragmas = ("journal_mode", "synchronous", "foreign_keys", "cache_size")
        seen.append(tuple(conn.execute(f"PRAGMA {name}").fetchone()[0] for name in pragmas))

    threads = [threading.Thread(target=read_pragmas) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    read_pragmas()
    db.close()

    # synchronous 1 is NORMAL; a negative cache_size is in KiB.
    assert seen == [("wal", 1, 1, -PAGE_CACHE_KIB)] * 3


SCHEMA = "CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY);"
MIGRATIONS = (
    "ALTER TABLE t ADD COLUMN a TEXT NOT NULL DEFAULT 'x';",
    """
    ALTER TABLE t ADD COLUMN b INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX IF NOT EXISTS t_b ON t (b);
    """,
)


def _columns(db: Database) -> list[str]:
    return [row["name"] for row in db.read().execute("PRAGMA table_info(t)")]


def test_migrations_bring_an_old_file_up_to_date_once_and_keep_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    first = Database(path, SCHEMA, MIGRATIONS[:1])  # a file made by an earlier release
    with first.write() as conn:
        conn.execute("INSERT INTO t (id, a) VALUES (1, 'kept')")
    first.close()

    db = Database(path, SCHEMA, MIGRATIONS)
    assert _columns(db) == ["id", "a", "b"]
    assert tuple(db.read().execute("SELECT id, a, b FROM t").fetchone()) == (1, "kept", 0)
    assert db.read().execute("PRAGMA user_version").fetchone()[0] == 2
    db.close()
    # Every start-up opens it again: nothing is run twice.
    assert _columns(Database(path, SCHEMA, MIGRATIONS)) == ["id", "a", "b"]


def test_a_file_from_a_newer_release_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    Database(path, SCHEMA, MIGRATIONS).close()
    with pytest.raises(RuntimeError, match="schema version 2; this release knows 1"):
        Database(path, SCHEMA, MIGRATIONS[:1])


class LockedAtFirst:
    """A connection whose first WAL switches meet a file another process is opening."""

    def __init__(self, locked: int) -> None:
        self.locked = locked
        self.tries = 0

    def execute(self, sql: str) -> None:
        assert sql == "PRAGMA journal_mode=WAL"
        self.tries += 1
        if self.tries <= self.locked:
            raise sqlite3.OperationalError("database is locked")


def test_the_wal_switch_is_tried_again_while_another_process_holds_the_file() -> None:
    conn = LockedAtFirst(locked=2)
    _enter_wal(conn)  # type: ignore[arg-type]  # only execute() is used
    assert conn.tries == 3


def test_another_error_of_the_wal_switch_is_not_tried_again() -> None:
    class Broken(LockedAtFirst):
        def execute(self, sql: str) -> None:
            self.tries += 1
            raise sqlite3.OperationalError("disk I/O error")

    conn = Broken(locked=0)
    with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
        _enter_wal(conn)  # type: ignore[arg-type]
    assert conn.tries == 1
