"""Persistence: orders in SQLite; request_id claims and per-order saga leases in Redis."""

from __future__ import annotations

import json
import logging
import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import redis

from meshkit.sqlite import Database
from order_service.domain import Line, Money, Order, Status, Step

_log = logging.getLogger(__name__)

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

Clock = Callable[[], int]


def wall_clock_us() -> int:
    return time.time_ns() // 1_000


class DuplicateRequest(Exception):
    """Another order already holds this request_id (the SQLite backstop caught it)."""

    def __init__(self, request_id: str) -> None:
        super().__init__(f"request_id {request_id!r} already has an order")
        self.request_id = request_id


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a newest-first page ended: the last order's create_time and id."""

    create_time_us: int
    order_id: str


class OrderStore:
    """The orders table. Every write stamps update_time; only PENDING orders can change."""

    def __init__(self, db: Database, clock: Clock = wall_clock_us) -> None:
        self._db = db
        self._clock = clock

    def ping(self) -> None:
        self._db.ping()

    def insert(self, order: Order) -> Order:
        """Stores a new order (stamping its times); DuplicateRequest if its request_id is taken."""
        now = self._clock()
        order = replace(order, create_time_us=order.create_time_us or now, update_time_us=now)
        try:
            with self._db.write() as conn:
                conn.execute(
                    "INSERT INTO orders (order_id, request_id, fingerprint, customer_id, lines,"
                    " total, currency, status, step, failure_reason, reservation_id, payment_id,"
                    " create_time, update_time)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                    ),
                )
        except sqlite3.IntegrityError as error:
            if "request_id" in str(error):
                raise DuplicateRequest(order.request_id) from None
            raise
        return order

    def save(self, order: Order) -> Order:
        """Persists a PENDING order's progress and returns what is stored.

        The ``status = 'PENDING'`` guard means a finished order is never reopened: if
        someone else finished it meanwhile, their version is returned.
        """
        now = self._clock()
        with self._db.write() as conn:
            cursor = conn.execute(
                "UPDATE orders SET status = ?, step = ?, failure_reason = ?, reservation_id = ?,"
                " payment_id = ?, total = ?, currency = ?, update_time = ?"
                " WHERE order_id = ? AND status = 'PENDING'",
                (
                    order.status.value,
                    order.step.value,
                    order.failure_reason,
                    order.reservation_id,
                    order.payment_id,
                    *_total_columns(order.total),
                    now,
                    order.order_id,
                ),
            )
            if cursor.rowcount == 1:
                return replace(order, update_time_us=now)
        stored = self.get(order.order_id)
        if stored is None:
            raise LookupError(f"order {order.order_id} vanished")
        return stored

    def delete(self, order_id: str) -> None:
        with self._db.write() as conn:
            conn.execute("DELETE FROM orders WHERE order_id = ?", (order_id,))

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

    def pending(self, *, idle_for_us: int, limit: int) -> list[Order]:
        """PENDING orders untouched for ``idle_for_us``, oldest first: the recovery loop's work."""
        rows = self._db.read().execute(
            "SELECT * FROM orders WHERE status = 'PENDING' AND update_time <= ?"
            " ORDER BY update_time LIMIT ?",
            (self._clock() - idle_for_us, limit),
        )
        return [_order(row) for row in rows]


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
    )


# --- Redis ---------------------------------------------------------------------------------

#: Deletes a key only if it still holds the caller's value, so nobody deletes what it does not own.
#: KEYS[1] the key; ARGV[1] the value the caller set (a lease token or a claim).
#: Returns 1 if the key was deleted, 0 if it was missing or held someone else's value.
COMPARE_AND_DELETE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""

#: Resets a lease's time to live, only if the caller still holds it.
#: KEYS[1] the lease key; ARGV[1] the caller's token; ARGV[2] the new time to live in ms.
#: Returns 1 if extended, 0 if the lease expired or belongs to someone else.
COMPARE_AND_EXTEND = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""

IDEMPOTENCY_TTL_S = 86_400


def idempotency_key(request_id: str) -> str:
    return f"order:idem:{request_id}"


def lease_key(order_id: str) -> str:
    return f"order:lock:{order_id}"


@dataclass(frozen=True, slots=True)
class Claim:
    """Who owns a request_id: the order it became and the payload's fingerprint."""

    order_id: str
    fingerprint: str

    def encode(self) -> bytes:
        return f"{self.order_id}|{self.fingerprint}".encode()

    @classmethod
    def decode(cls, raw: bytes | str) -> Claim:
        text = raw.decode() if isinstance(raw, bytes) else raw
        order_id, _, digest = text.partition("|")
        return cls(order_id, digest)


class Claims:
    """AIP-155 request_id claims: the first CreateOrder to claim an id runs its saga."""

    def __init__(self, client: redis.Redis, ttl_s: int = IDEMPOTENCY_TTL_S) -> None:
        self._redis = client
        self._ttl_s = ttl_s
        self._delete = client.register_script(COMPARE_AND_DELETE)

    def claim(self, request_id: str, claim: Claim) -> Claim | None:
        """None if ``claim`` now owns request_id, else the claim that already does."""
        key = idempotency_key(request_id)
        while True:
            if self._redis.set(key, claim.encode(), nx=True, ex=self._ttl_s):
                return None
            raw = self._redis.get(key)
            if raw is not None:
                return Claim.decode(raw)
            # The holder withdrew between our SET and GET: try again.

    def holder(self, request_id: str) -> Claim | None:
        raw = self._redis.get(idempotency_key(request_id))
        return None if raw is None else Claim.decode(raw)

    def withdraw(self, request_id: str, claim: Claim) -> bool:
        """Removes our claim (never someone else's) so the request_id can be used again."""
        return bool(self._delete(keys=[idempotency_key(request_id)], args=[claim.encode()]))


#: Lease.keep() trusts a confirmation this recent without asking Redis again.
LEASE_RECHECK_S = 1.0


class Lease:
    """One runner's exclusive, expiring right to drive one order's saga (after redis-py's Lock).

    ``SET NX PX`` with a random token takes it; only compare-then-act scripts extend or
    release it, so a runner whose lease expired can never cut short its successor's.
    """

    def __init__(self, locks: Leases, order_id: str) -> None:
        self._locks = locks
        self.key = lease_key(order_id)
        self.token = secrets.token_hex(16).encode()
        #: When Redis last confirmed we hold it (monotonic; read before asking, so never late).
        self._confirmed_at: float | None = None

    def acquire(self) -> bool:
        """Takes the lease if it is free; never waits. Raises redis errors (the caller decides)."""
        asked_at = self._locks.monotonic()
        taken = bool(self._locks.redis.set(self.key, self.token, nx=True, px=self._locks.lease_ms))
        self._confirmed_at = asked_at if taken else None
        return taken

    def extend(self) -> bool:
        """Renews the lease for another full term; False if it was lost (or Redis is away)."""
        asked_at = self._locks.monotonic()
        try:
            extended = bool(
                self._locks.extend_script(keys=[self.key], args=[self.token, self._locks.lease_ms])
            )
        except redis.RedisError as error:
            _log.warning("could not extend %s: %s", self.key, error)
            extended = False
        self._confirmed_at = asked_at if extended else None
        return extended

    def keep(self) -> bool:
        """Before each saga step: renews the lease unless Redis confirmed it very recently.

        A saga runs its steps within milliseconds, so renewing before every step cost a
        Redis round trip per step (a quarter of the order service's time under load). Within
        ``recheck_s`` of the last confirmation the lease is certainly ours (it lasts
        ``lease_ms``, far longer, and only our token can delete it), and a lease lost with
        Redis's data goes unnoticed for at most ``recheck_s``, well below the idle age the
        recovery loop waits before it takes an order over.
        """
        confirmed_at = self._confirmed_at
        if confirmed_at is not None and (
            self._locks.monotonic() - confirmed_at < self._locks.recheck_s
        ):
            return True
        return self.extend()

    def release(self) -> None:
        try:
            self._locks.delete_script(keys=[self.key], args=[self.token])
        except redis.RedisError as error:  # it expires on its own
            _log.warning("could not release %s: %s", self.key, error)


class Leases:
    """Makes per-order leases; one Redis, one lease term."""

    def __init__(
        self,
        client: redis.Redis,
        lease_ms: int,
        *,
        recheck_s: float = LEASE_RECHECK_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if recheck_s < 0:
            raise ValueError(f"recheck_s must be >= 0, got {recheck_s}")
        self.redis = client
        self.lease_ms = lease_ms
        # Never trust a confirmation for more than a quarter of the lease's term.
        self.recheck_s = min(recheck_s, lease_ms / 4000)
        self.monotonic = monotonic
        self.extend_script = client.register_script(COMPARE_AND_EXTEND)
        self.delete_script = client.register_script(COMPARE_AND_DELETE)

    def lease(self, order_id: str) -> Lease:
        return Lease(self, order_id)

    def held(self, order_id: str) -> bool:
        """Whether some runner is driving this order's saga right now."""
        return bool(self.redis.exists(lease_key(order_id)))
