"""Every thread's connection is set up alike: WAL, NORMAL sync, foreign keys, a bounded cache."""

from __future__ import annotations

import threading
from pathlib import Path

from meshkit.sqlite import PAGE_CACHE_KIB, Database


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
