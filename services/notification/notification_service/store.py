"""Notifications in SQLite, one row per order event: ``UNIQUE(event_id)`` makes a redelivered
event a no-op, whichever consumer (or process) it reaches. No Redis here: the consumers
acknowledge an event on the stream after this store's transaction has committed."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from meshkit.paging import INT64_MAX
from meshkit.sqlite import Database

from .domain import Notification, PageQuery

SCHEMA = """
CREATE TABLE IF NOT EXISTS notifications (
    seq             INTEGER PRIMARY KEY,
    notification_id TEXT NOT NULL UNIQUE,
    event_id        TEXT NOT NULL UNIQUE,
    order_id        TEXT NOT NULL,
    customer_id     TEXT NOT NULL,
    status          TEXT NOT NULL,
    reason          TEXT NOT NULL,
    total_units     INTEGER,
    total_currency  TEXT,
    message         TEXT NOT NULL,
    occurred_at_ms  INTEGER NOT NULL,
    -- when the row was written: with occurred_at_ms, the stream's end-to-end latency
    stored_at_ms    INTEGER NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS notifications_by_customer
    ON notifications (customer_id, occurred_at_ms, seq);
"""

_COLUMNS = (
    "notification_id, event_id, order_id, customer_id, status, reason, total_units,"
    " total_currency, message, occurred_at_ms, stored_at_ms"
)


def _notification(row: sqlite3.Row) -> Notification:
    return Notification(**dict(row))


class NotificationStore:
    def __init__(self, path: Path) -> None:
        self._db = Database(path, SCHEMA)
        #: The transaction :meth:`together` holds open, per thread (each consumer is one).
        self._open = threading.local()

    def ping(self) -> None:
        self._db.ping()

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def together(self) -> Iterator[None]:
        """Every :meth:`add` of this thread inside is one transaction: all committed at the end,
        or none of them when anything inside raises. A consumer's read of 16 events costs one
        BEGIN/COMMIT instead of 16."""
        with self._db.write() as conn:
            self._open.conn = conn
            try:
                yield
            finally:
                self._open.conn = None

    def add(self, notification: Notification) -> bool:
        """Stores it; False when its event was stored already (a redelivery, or the same event
        twice in one :meth:`together`)."""
        conn: sqlite3.Connection | None = getattr(self._open, "conn", None)
        if conn is not None:
            return self._insert(conn, notification)
        with self._db.write() as conn:
            return self._insert(conn, notification)

    @staticmethod
    def _insert(conn: sqlite3.Connection, notification: Notification) -> bool:
        # ON CONFLICT (event_id), not INSERT OR IGNORE: only a redelivery is a no-op; any other
        # broken row (a NOT NULL, say) still raises, and the consumer counts a failure.
        cursor = conn.execute(
            f"INSERT INTO notifications ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"  # noqa: S608  # fixed columns
            " ON CONFLICT (event_id) DO NOTHING",
            (
                notification.notification_id,
                notification.event_id,
                notification.order_id,
                notification.customer_id,
                notification.status,
                notification.reason,
                notification.total_units,
                notification.total_currency,
                notification.message,
                notification.occurred_at_ms,
                notification.stored_at_ms,
            ),
        )
        return cursor.rowcount == 1

    def page(self, query: PageQuery) -> list[Notification]:
        """Up to ``query.size + 1`` of the customer's notifications, newest event first (the
        extra one says whether there is a next page). Consumers store events in parallel, so
        the order they were stored in is not the order they happened in."""
        rows = (
            self._db.read()
            .execute(
                f"SELECT seq, {_COLUMNS} FROM notifications"  # noqa: S608  # fixed columns
                " WHERE customer_id = ? AND (occurred_at_ms, seq) < (?, ?)"
                " ORDER BY occurred_at_ms DESC, seq DESC LIMIT ?",
                (query.customer_id, *(query.before or (INT64_MAX, INT64_MAX)), query.size + 1),
            )
            .fetchall()
        )
        return [_notification(row) for row in rows]

    def by_event(self, event_id: str) -> Notification | None:
        row = (
            self._db.read()
            .execute(
                f"SELECT seq, {_COLUMNS} FROM notifications WHERE event_id = ?",  # noqa: S608  # fixed columns
                (event_id,),
            )
            .fetchone()
        )
        return None if row is None else _notification(row)
