"""The orders table in SQLite, and the outbox of the events of finished orders (published by
outbox.py); request_id claims and saga leases are in claims.py and leases.py."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from meshkit import order_events, tracing
from meshkit.order_events import OrderEvent
from meshkit.sqlite import Database
from order_service.domain import Line, Money, Order, Status, Step
from order_service.ports import FencedOut

SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    order_id       TEXT PRIMARY KEY,
    request_id     TEXT NOT NULL UNIQUE,      -- AIP-155 key; the durable backstop for Redis
    fingerprint    TEXT NOT NULL,
    customer_id    TEXT NOT NULL,
    lines          TEXT NOT NULL,             -- JSON [{"sku": ..., "quantity": ...}]
    total          INTEGER,                   -- minor units; NULL until stock is reserved
    currency       TEXT,
    status         TEXT NOT NULL CHECK (status IN ('PENDING', 'CONFIRMED', 'FAILED')),
    step           TEXT NOT NULL,             -- the next saga action (domain.Step)
    failure_reason TEXT NOT NULL DEFAULT '',
    reservation_id TEXT NOT NULL DEFAULT '',
    payment_id     TEXT NOT NULL DEFAULT '',
    create_time    INTEGER NOT NULL,          -- unix microseconds
    update_time    INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS orders_newest ON orders (create_time DESC, order_id DESC);
CREATE INDEX IF NOT EXISTS orders_customer_newest
    ON orders (customer_id, create_time DESC, order_id DESC);
CREATE INDEX IF NOT EXISTS orders_pending ON orders (update_time) WHERE status = 'PENDING';
"""

#: What SCHEMA's table has become since its first release, one step per entry (meshkit.sqlite
#: runs those a file has not had yet), so a var/ from an earlier version keeps working.
MIGRATIONS = (
    # Recovery's view of a PENDING order that runs could not move (store.Stuck); every saga
    # save that moves the order puts these back to their defaults.
    """
    ALTER TABLE orders ADD COLUMN stuck_runs INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE orders ADD COLUMN retry_time INTEGER NOT NULL DEFAULT 0;  -- unix microseconds
    ALTER TABLE orders ADD COLUMN attention_reason TEXT NOT NULL DEFAULT '';
    """,
    # The fencing token of the last saga write (order_service.leases): a write carrying an
    # older one is refused. Rows from before it have 0, which every token passes.
    """
    ALTER TABLE orders ADD COLUMN fence INTEGER NOT NULL DEFAULT 0;
    """,
    # The transactional outbox: a finished order's event, written in the transaction that
    # finishes it and deleted once it is on the stream. AUTOINCREMENT: a seq is never reused
    # after a delete, so seq order is commit order. Orders finished before it have no event.
    """
    CREATE TABLE outbox (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id   TEXT NOT NULL UNIQUE,          -- meshkit.order_events.event_id
        fields     TEXT NOT NULL,                 -- JSON: the stream entry's fields
        created_at INTEGER NOT NULL               -- unix milliseconds
    );
    """,
)

Clock = Callable[[], int]


def wall_clock_us() -> int:
    return time.time_ns() // 1_000


class DuplicateRequest(Exception):
    """Another order already holds this request_id (the SQLite backstop caught it)."""

    def __init__(self, request_id: str) -> None:
        super().__init__(f"request_id {request_id!r} already has an order")
        self.request_id = request_id


@dataclass(frozen=True, slots=True)
class Stuck:
    """What recovery keeps about a PENDING order that saga runs left at its step."""

    #: Runs in a row that ended with the order still at the same step.
    runs: int = 0
    #: Recovery tries it again from then on (unix microseconds; 0: whenever it is idle).
    retry_time_us: int = 0
    #: Set once the order needs a person: which step keeps failing, how often, and why.
    attention_reason: str = ""


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One event waiting in the outbox to be published."""

    seq: int
    fields: dict[str, str]
    created_ms: int


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a newest-first page ended: the last order's create_time and id."""

    create_time_us: int
    order_id: str


class OrderStore:
    """The orders table. Every saga write stamps update_time and carries its runner's fencing
    token: one older than the row's is refused with FencedOut. Only PENDING orders can change.

    The save that finishes an order (CONFIRMED or FAILED) also puts its event in the outbox, in
    the same transaction (unless ``events`` is off), and calls ``on_event`` once it has
    committed, so the relay publishes it at once rather than at its next poll.
    """

    def __init__(
        self,
        db: Database,
        clock: Clock = wall_clock_us,
        *,
        events: bool = True,
        on_event: Callable[[], None] = lambda: None,
    ) -> None:
        self._db = db
        self._clock = clock
        self._events = events
        self._on_event = on_event

    def ping(self) -> None:
        self._db.ping()

    def now_us(self) -> int:
        """The clock that stamps update_time (and recovery's idea of now)."""
        return self._clock()

    def insert(self, order: Order, *, fence: int) -> Order:
        """Stores a new order (stamping its times) with its creating runner's fencing token.

        DuplicateRequest if another order holds its request_id; FencedOut if the order itself
        is there already: a runner that took over from this one (paused past its lease before
        the insert) inserted it first.
        """
        now = self._clock()
        order = replace(
            order, create_time_us=order.create_time_us or now, update_time_us=now, fence=fence
        )
        try:
            with self._db.write() as conn:
                conn.execute(
                    "INSERT INTO orders (order_id, request_id, fingerprint, customer_id, lines,"
                    " total, currency, status, step, failure_reason, reservation_id, payment_id,"
                    " create_time, update_time, fence)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        order.order_id,
                        order.request_id,
                        order.fingerprint,
                        order.customer_id,
                        _lines_json(order.lines),
                        *_total_columns(order.total),
                        order.status.value,
                        order.step.value,
                        order.failure_reason,
                        order.reservation_id,
                        order.payment_id,
                        order.create_time_us,
                        order.update_time_us,
                        fence,
                    ),
                )
        except sqlite3.IntegrityError as error:
            # Which UNIQUE constraint SQLite names is its choice: look for the order first.
            stored = self.get(order.order_id)
            if stored is not None:
                raise FencedOut(order.order_id, fence, stored.fence) from None
            if "request_id" in str(error):
                raise DuplicateRequest(order.request_id) from None
            raise
        return order

    def save(self, order: Order, *, fence: int) -> Order:
        """Persists a PENDING order's progress and returns what is stored.

        FencedOut if the row has seen a newer fencing token than ``fence``. The ``status =
        'PENDING'`` guard means a finished order is never reopened: if someone else finished
        it meanwhile, their version is returned.
        """
        now = self._clock()
        with self._db.write() as conn:
            cursor = conn.execute(
                "UPDATE orders SET status = ?, step = ?, failure_reason = ?, reservation_id = ?,"
                " payment_id = ?, total = ?, currency = ?, update_time = ?, fence = ?,"
                " stuck_runs = 0, retry_time = 0, attention_reason = ''"
                " WHERE order_id = ? AND status = 'PENDING' AND fence <= ?",
                (
                    order.status.value,
                    order.step.value,
                    order.failure_reason,
                    order.reservation_id,
                    order.payment_id,
                    *_total_columns(order.total),
                    now,
                    fence,
                    order.order_id,
                    fence,
                ),
            )
            saved = cursor.rowcount == 1
            # The status guard above lets one save finish an order, so it has one event.
            event = saved and self._events and order.status is not Status.PENDING
            if event:
                _add_event(conn, order, now // 1000)
        if saved:
            if event:
                self._on_event()
            return replace(order, update_time_us=now, fence=fence)
        stored = self.get(order.order_id)
        if stored is None:
            raise LookupError(f"order {order.order_id} vanished")
        if stored.fence > fence:
            raise FencedOut(order.order_id, fence, stored.fence)
        return stored

    def take(self, order_id: str, *, fence: int) -> Order | None:
        """Stamps the fencing token of a runner taking a PENDING order over on its row, before
        the runner's first call, and returns the order as stored (None if there is none).

        Until then the row holds its previous runner's token, which a runner paused past its
        lease could still write with. update_time is left alone: recovery's idle age counts
        from the last step. FencedOut if the row has seen a newer token; a finished order is
        returned as it is.
        """
        with self._db.write() as conn:
            found = conn.execute(
                "UPDATE orders SET fence = ?"
                " WHERE order_id = ? AND status = 'PENDING' AND fence <= ? RETURNING *",
                (fence, order_id, fence),
            ).fetchone()
        if found is not None:
            return _order(found)
        stored = self.get(order_id)
        if stored is not None and stored.status is Status.PENDING and stored.fence > fence:
            raise FencedOut(order_id, fence, stored.fence)
        return stored

    def delete(self, order_id: str, *, fence: int) -> None:
        """Deletes an order its creating run discards; FencedOut if a newer runner wrote it."""
        with self._db.write() as conn:
            cursor = conn.execute(
                "DELETE FROM orders WHERE order_id = ? AND fence <= ?", (order_id, fence)
            )
        if cursor.rowcount == 0:
            stored = self.get(order_id)
            if stored is not None:
                raise FencedOut(order_id, fence, stored.fence)

    def get(self, order_id: str) -> Order | None:
        row = self._db.read().execute("SELECT * FROM orders WHERE order_id = ?", (order_id,))
        found = row.fetchone()
        return _order(found) if found else None

    def by_request_id(self, request_id: str) -> Order | None:
        row = self._db.read().execute("SELECT * FROM orders WHERE request_id = ?", (request_id,))
        found = row.fetchone()
        return _order(found) if found else None

    def page(self, *, customer_id: str, limit: int, after: Cursor | None) -> list[Order]:
        """Newest first (create_time, then order_id, descending); ``customer_id`` "" = all."""
        where: list[str] = []
        params: list[Any] = []
        if customer_id:
            where.append("customer_id = ?")
            params.append(customer_id)
        if after is not None:
            where.append("(create_time < ? OR (create_time = ? AND order_id < ?))")
            params += [after.create_time_us, after.create_time_us, after.order_id]
        sql = "SELECT * FROM orders"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY create_time DESC, order_id DESC LIMIT ?"
        params.append(limit)
        return [_order(row) for row in self._db.read().execute(sql, params)]

    def due(
        self,
        *,
        idle_since_us: int,
        retry_before_us: int | None,
        limit: int,
        after: tuple[int, str] | None,
    ) -> list[Order]:
        """PENDING orders untouched since ``idle_since_us`` whose retry time is not after
        ``retry_before_us`` (None: whatever it is), oldest first (update_time, then order_id),
        after the key ``after``: one page of the recovery loop's work."""
        sql = "SELECT * FROM orders WHERE status = 'PENDING' AND update_time <= ?"
        params: list[Any] = [idle_since_us]
        if retry_before_us is not None:
            sql += " AND retry_time <= ?"
            params.append(retry_before_us)
        if after is not None:
            sql += " AND (update_time, order_id) > (?, ?)"
            params += list(after)
        sql += " ORDER BY update_time, order_id LIMIT ?"
        params.append(limit)
        return [_order(row) for row in self._db.read().execute(sql, params)]

    def next_due_us(self, *, idle_for_us: int, after_us: int) -> int | None:
        """The first time after ``after_us`` at which a PENDING order becomes due (idle for
        ``idle_for_us`` and past its retry time), or None if none will."""
        due = "max(update_time + ?, retry_time)"
        row = self._db.read().execute(
            f"SELECT min({due}) FROM orders WHERE status = 'PENDING' AND {due} > ?",  # noqa: S608
            (idle_for_us, idle_for_us, after_us),
        )
        found: int | None = row.fetchone()[0]
        return found

    def stuck(self, order_id: str) -> Stuck:
        """What recovery knows of a PENDING order's failed runs (Stuck() for any other)."""
        row = self._db.read().execute(
            "SELECT stuck_runs, retry_time, attention_reason FROM orders"
            " WHERE order_id = ? AND status = 'PENDING'",
            (order_id,),
        )
        found = row.fetchone()
        return Stuck() if found is None else Stuck(*found)

    def mark_stuck(self, order_id: str, stuck: Stuck) -> bool:
        """Records a run that left a PENDING order at its step; False if it is no longer PENDING."""
        with self._db.write() as conn:
            cursor = conn.execute(
                "UPDATE orders SET stuck_runs = ?, retry_time = ?, attention_reason = ?"
                " WHERE order_id = ? AND status = 'PENDING'",
                (stuck.runs, stuck.retry_time_us, stuck.attention_reason, order_id),
            )
            return cursor.rowcount == 1

    def attention_reasons(self, order_ids: list[str]) -> dict[str, str]:
        """The attention reason of each of these orders that needs a person."""
        if not order_ids:
            return {}
        marks = ",".join("?" * len(order_ids))
        query = (
            f"SELECT order_id, attention_reason FROM orders WHERE order_id IN ({marks})"  # noqa: S608 - ?s only
            " AND status = 'PENDING' AND attention_reason != ''"
        )
        rows = self._db.read().execute(query, order_ids)
        return dict(rows.fetchall())

    # --- the outbox ---------------------------------------------------------------------------

    def outbox(self, limit: int) -> list[OutboxRow]:
        """The oldest ``limit`` events not yet published, in the order they were committed."""
        rows = self._db.read().execute(
            "SELECT seq, fields, created_at FROM outbox ORDER BY seq LIMIT ?", (limit,)
        )
        return [OutboxRow(seq, json.loads(fields), at) for seq, fields, at in rows]

    def published(self, seqs: list[int]) -> None:
        """Deletes events now on the stream."""
        if not seqs:
            return
        marks = ",".join("?" * len(seqs))
        with self._db.write() as conn:
            conn.execute(f"DELETE FROM outbox WHERE seq IN ({marks})", seqs)  # noqa: S608 - ?s

    def outbox_backlog(self) -> tuple[int, int | None]:
        """How many events wait in the outbox, and when the oldest was committed (unix ms)."""
        row = self._db.read().execute("SELECT count(*), min(created_at) FROM outbox")
        count, oldest = row.fetchone()
        return count, oldest

    def needing_attention(self) -> int:
        """How many PENDING orders are flagged for a person."""
        row = self._db.read().execute(
            "SELECT count(*) FROM orders WHERE status = 'PENDING' AND attention_reason != ''"
        )
        count: int = row.fetchone()[0]
        return count


def order_event(order: Order, occurred_at_ms: int, traceparent: str = "") -> OrderEvent:
    """The event of a finished order; ``traceparent`` ("00-<trace id>-<span id>-<flags>") is
    the span that finished it, and names the event's trace id too."""
    confirmed = order.status is Status.CONFIRMED
    status = order_events.STATUS_CONFIRMED if confirmed else order_events.STATUS_FAILED
    return OrderEvent(
        event_id=order_events.event_id(order.order_id, status),
        type=order_events.ORDER_CONFIRMED if confirmed else order_events.ORDER_FAILED,
        order_id=order.order_id,
        customer_id=order.customer_id,
        status=status,
        reason=order.failure_reason,
        total_units=None if order.total is None else order.total.amount_minor,
        total_currency=None if order.total is None else order.total.currency_code,
        occurred_at_ms=occurred_at_ms,
        trace_id=traceparent.split("-")[1] if traceparent else "",
        traceparent=traceparent,
    )


def _add_event(conn: sqlite3.Connection, order: Order, now_ms: int) -> None:
    event = order_event(order, now_ms, tracing.current_traceparent())
    conn.execute(
        "INSERT INTO outbox (event_id, fields, created_at) VALUES (?, ?, ?)",
        (event.event_id, json.dumps(event.to_fields()), now_ms),
    )


def _lines_json(lines: tuple[Line, ...]) -> str:
    return json.dumps([{"sku": ln.sku, "quantity": ln.quantity} for ln in lines])


def _total_columns(total: Money | None) -> tuple[int | None, str | None]:
    return (None, None) if total is None else (total.amount_minor, total.currency_code)


def _order(row: sqlite3.Row) -> Order:
    total = None if row["total"] is None else Money(row["currency"], row["total"])
    return Order(
        order_id=row["order_id"],
        request_id=row["request_id"],
        fingerprint=row["fingerprint"],
        customer_id=row["customer_id"],
        lines=tuple(Line(ln["sku"], ln["quantity"]) for ln in json.loads(row["lines"])),
        status=Status(row["status"]),
        step=Step(row["step"]),
        failure_reason=row["failure_reason"],
        reservation_id=row["reservation_id"],
        payment_id=row["payment_id"],
        total=total,
        create_time_us=row["create_time"],
        update_time_us=row["update_time"],
        fence=row["fence"],
    )
