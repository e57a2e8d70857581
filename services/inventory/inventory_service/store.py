"""Inventory persistence: SQLite is the truth; Redis is a read-through cache in front of reads.

Stock changes (Reserve, Release) run in one ``BEGIN IMMEDIATE`` transaction each and
never read the cache. After a change commits, the cache generation is bumped so every
cached read taken before it is unreachable (see :class:`ItemCache`).
"""

from __future__ import annotations

import json
import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Literal

import redis

from inventory_service import domain
from inventory_service.domain import (
    CatalogEntry,
    Item,
    Line,
    PageQuery,
    Reservation,
    ReservationState,
    ReserveCommand,
    ReservedLine,
)
from meshkit.errors import AlreadyExists, FailedPrecondition, NotFound
from meshkit.ids import new_id
from meshkit.sqlite import Database

_log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    sku         TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    price_minor INTEGER NOT NULL CHECK (price_minor >= 0),
    -- the last line of defence against overselling: a write that would go negative fails
    available   INTEGER NOT NULL CHECK (available >= 0)
);
CREATE TABLE IF NOT EXISTS reservations (
    reservation_id TEXT PRIMARY KEY,
    order_id       TEXT NOT NULL UNIQUE,
    state          TEXT NOT NULL CHECK (state IN ('RESERVED', 'COMMITTED', 'RELEASED')),
    create_time_ms INTEGER NOT NULL,
    update_time_ms INTEGER NOT NULL
);
-- A Reserve refused for stock is final for its order_id: a late duplicate of it (e.g. the original
-- call arriving after the saga's compensating Reserve was refused and the order failed) must get
-- the same answer, not take stock that nobody will ever release.
CREATE TABLE IF NOT EXISTS refused_reservations (
    order_id       TEXT PRIMARY KEY,
    lines_json     TEXT NOT NULL,
    reason         TEXT NOT NULL,
    create_time_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS reservation_lines (
    reservation_id   TEXT NOT NULL REFERENCES reservations (reservation_id),
    line_no          INTEGER NOT NULL,
    sku              TEXT NOT NULL REFERENCES items (sku),
    quantity         INTEGER NOT NULL CHECK (quantity > 0),
    unit_price_minor INTEGER NOT NULL,
    PRIMARY KEY (reservation_id, line_no)
);
"""

_SELECT_RESERVATION = {
    "order_id": "SELECT reservation_id, order_id, state FROM reservations WHERE order_id = ?",
    "reservation_id": (
        "SELECT reservation_id, order_id, state FROM reservations WHERE reservation_id = ?"
    ),
}

CACHE_NAMESPACE = "inventory:cache"

#: Reads the cache generation and the entry cached under it in one atomic step.
#: KEYS[1]  the generation counter, e.g. ``inventory:cache:gen``
#: ARGV[1]  the cache key prefix, e.g. ``inventory:cache``
#: ARGV[2]  the entry, e.g. ``item:SKU-0001`` (key = ARGV[1]:<generation>:ARGV[2])
#: ARGV[3]  a random start for the counter when it is missing (evicted, or Redis wiped): never
#:          restarting from a fixed number means a lost counter cannot revive stale entries
#: returns  ``{generation, cached value or nil}``
#: The entry key is derived from the generation inside the script, so it is not declared in
#: KEYS: fine on the single Redis of this mesh, not on Redis Cluster.
CACHE_READ_SCRIPT = """
local generation = redis.call('GET', KEYS[1])
if not generation then
  generation = ARGV[3]
  redis.call('SET', KEYS[1], generation)
end
return {generation, redis.call('GET', ARGV[1] .. ':' .. generation .. ':' .. ARGV[2])}
"""

#: Moves the cache to a new generation: entries cached under older ones are never read again
#: (they expire by TTL).
#: KEYS[1]  the generation counter
#: ARGV[1]  a random start for the counter when it is missing (as in CACHE_READ_SCRIPT)
#: returns  the new generation
CACHE_BUMP_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('INCR', KEYS[1])
end
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1]
"""


def _random_generation() -> str:
    # 48 bits: random enough to never meet an old generation, far from INCR's 2**63 limit.
    return str(secrets.randbits(48))


class ItemCache:
    """Generation-keyed read-through cache; Redis failures degrade to uncached reads.

    Why it is race-free: a reader takes the generation *before* it reads SQLite, and a
    writer bumps it *after* its transaction commits. A reader that read SQLite before a
    change can only store its value under the old generation, which no reader uses once
    the bump is done.

    A failed Redis call starts a back-off of ``backoff_s`` during which Redis is not
    tried at all, so a dead Redis costs one timeout, not one per call. Bumps that could
    not be made are owed, and paid before the cache is read again.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        ttl_s: int,
        backoff_s: float,
        clock: Callable[[], float] = time.monotonic,
        namespace: str = CACHE_NAMESPACE,
    ) -> None:
        self._client = client
        self._ttl_s = ttl_s
        self._backoff_s = backoff_s
        self._clock = clock
        self._namespace = namespace
        self.generation_key = f"{namespace}:gen"
        self._read = client.register_script(CACHE_READ_SCRIPT)
        self._bump = client.register_script(CACHE_BUMP_SCRIPT)
        self._lock = threading.Lock()
        self._down_until: float | None = None
        self._changes = 0  # stock changes this process made
        self._published = 0  # changes already covered by a generation bump

    def key(self, generation: str, entry: str) -> str:
        return f"{self._namespace}:{generation}:{entry}"

    @property
    def degraded(self) -> bool:
        """True while Redis is in back-off after a failure."""
        with self._lock:
            return self._down_until is not None and self._clock() < self._down_until

    def read_through(
        self,
        entry: str,
        load: Callable[[], Any],
    ) -> Any:
        """The cached JSON value of ``entry``, else ``load()`` (cached unless it is None)."""
        generation: str | None = None
        if self._publish():
            try:
                raw_generation, cached = self._read(
                    keys=[self.generation_key],
                    args=[self._namespace, entry, _random_generation()],
                )
                generation = raw_generation.decode()
                self._recovered()
                if cached is not None:
                    return json.loads(cached)
            except redis.RedisError as error:
                self._failed(error)
                generation = None
        value = load()
        if value is not None and generation is not None:
            try:
                self._client.set(
                    self.key(generation, entry),
                    json.dumps(value, separators=(",", ":")),
                    ex=self._ttl_s,
                )
            except redis.RedisError as error:
                self._failed(error)
        return value

    def invalidate(self) -> None:
        """Called after a stock change commits; if Redis is unreachable the bump is owed."""
        with self._lock:
            self._changes += 1
        self._publish()

    def _publish(self) -> bool:
        """Pays owed bumps; True when the cache may be used."""
        with self._lock:
            if self._down_until is not None and self._clock() < self._down_until:
                return False
            target = self._changes
            if target == self._published:
                return True
        try:
            self._bump(keys=[self.generation_key], args=[_random_generation()])
        except redis.RedisError as error:
            self._failed(error)
            return False
        with self._lock:
            # Every change counted up to `target` committed before this bump ran.
            self._published = max(self._published, target)
        self._recovered()
        return True

    def _failed(self, error: redis.RedisError) -> None:
        with self._lock:
            first = self._down_until is None
            self._down_until = self._clock() + self._backoff_s
        if first:
            _log.warning("redis cache unavailable, reading SQLite directly: %s", error)

    def _recovered(self) -> None:
        with self._lock:
            was_down = self._down_until is not None
            self._down_until = None
        if was_down:
            _log.info("redis cache available again")


class InventoryStore:
    """Items and reservations in SQLite, with an optional cache in front of item reads."""

    def __init__(
        self,
        db: Database,
        cache: ItemCache | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self._cache = cache
        self._clock = clock

    def seed(self, catalog: tuple[CatalogEntry, ...], stock: int) -> int:
        """Adds catalog SKUs that are missing with ``stock`` units; existing stock is kept."""
        with self._db.write() as conn:
            inserted = 0
            for entry in catalog:
                cursor = conn.execute(
                    "INSERT OR IGNORE INTO items (sku, name, price_minor, available)"
                    " VALUES (?, ?, ?, ?)",
                    (entry.sku, entry.name, entry.price_minor, stock),
                )
                inserted += cursor.rowcount
        if inserted:
            self._stock_changed()
        return inserted

    # --- reads (cached) -----------------------------------------------------------------------

    def get_item(self, sku: str) -> Item | None:
        raw = self._read_through(f"item:{sku}", lambda: self._load_item(sku))
        return None if raw is None else Item(**raw)

    def list_items(self, query: PageQuery) -> tuple[list[Item], bool]:
        """One page in SKU order, and whether more items follow it."""
        raw = self._read_through(
            f"items:{query.after}:{query.size}", lambda: self._load_page(query)
        )
        return [Item(**item) for item in raw["items"]], bool(raw["more"])

    def _read_through(self, entry: str, load: Callable[[], Any]) -> Any:
        if self._cache is None:
            return load()
        return self._cache.read_through(entry, load)

    def _load_item(self, sku: str) -> dict[str, Any] | None:
        row = (
            self._db.read()
            .execute("SELECT sku, name, price_minor, available FROM items WHERE sku = ?", (sku,))
            .fetchone()
        )
        return None if row is None else dict(row)

    def _load_page(self, query: PageQuery) -> dict[str, Any]:
        rows = (
            self._db.read()
            .execute(
                "SELECT sku, name, price_minor, available FROM items WHERE sku > ?"
                " ORDER BY sku LIMIT ?",
                (query.after, query.size + 1),
            )
            .fetchall()
        )
        return {"items": [dict(row) for row in rows[: query.size]], "more": len(rows) > query.size}

    # --- stock changes (never cached) ---------------------------------------------------------

    def reserve(self, command: ReserveCommand) -> Reservation:
        """Holds every line or none; the same order_id returns its existing reservation."""
        with self._db.write() as conn:
            existing = self._load_reservation(conn, "order_id", command.order_id)
            if existing is not None:
                if not command.same_lines(Line(x.sku, x.quantity) for x in existing.lines):
                    raise AlreadyExists(
                        f"order_id {command.order_id} already has a reservation"
                        f" ({existing.reservation_id}) with different lines"
                    )
                return existing
            refused = conn.execute(
                "SELECT lines_json, reason FROM refused_reservations WHERE order_id = ?",
                (command.order_id,),
            ).fetchone()
            if refused is not None:
                if not command.same_lines(Line(sku, q) for sku, q in json.loads(refused[0])):
                    raise AlreadyExists(
                        f"order_id {command.order_id} was already refused with different lines"
                    )
                raise FailedPrecondition(refused[1])
            skus = [line.sku for line in command.lines]
            rows = conn.execute(
                "SELECT sku, price_minor, available FROM items"
                " WHERE sku IN (SELECT value FROM json_each(?))",
                (json.dumps(skus),),
            ).fetchall()
            domain.check_known(command, (row["sku"] for row in rows))
            out_of_stock: FailedPrecondition | None = None
            try:
                domain.check_stock(command, {row["sku"]: row["available"] for row in rows})
            except FailedPrecondition as refusal:
                conn.execute(
                    "INSERT INTO refused_reservations"
                    " (order_id, lines_json, reason, create_time_ms)"
                    " VALUES (?, ?, ?, ?)",
                    (
                        command.order_id,
                        json.dumps([[line.sku, line.quantity] for line in command.lines]),
                        refusal.message,
                        self._now_ms(),
                    ),
                )
                out_of_stock = refusal
            else:
                reservation = self._hold(conn, command, rows)
        if out_of_stock is not None:
            raise out_of_stock  # after the refusal has committed
        self._stock_changed()
        return reservation

    def _hold(
        self, conn: sqlite3.Connection, command: ReserveCommand, rows: list[sqlite3.Row]
    ) -> Reservation:
        prices = {row["sku"]: row["price_minor"] for row in rows}
        for line in command.lines:
            cursor = conn.execute(
                "UPDATE items SET available = available - ? WHERE sku = ? AND available >= ?",
                (line.quantity, line.sku, line.quantity),
            )
            if cursor.rowcount != 1:  # cannot happen under the write lock; never oversell
                raise RuntimeError(f"stock of {line.sku} changed inside a write transaction")
        reservation = Reservation(
            reservation_id=new_id(domain.RESERVATION_ID_PREFIX),
            order_id=command.order_id,
            state=ReservationState.RESERVED,
            lines=tuple(
                ReservedLine(line.sku, line.quantity, prices[line.sku]) for line in command.lines
            ),
        )
        self._insert_reservation(conn, reservation)
        return reservation

    def commit(self, reservation_id: str) -> Reservation:
        return self._transition(reservation_id, domain.commit)

    def release(self, reservation_id: str) -> Reservation:
        return self._transition(reservation_id, domain.release)

    def _transition(
        self, reservation_id: str, step: Callable[[Reservation], ReservationState]
    ) -> Reservation:
        with self._db.write() as conn:
            current = self._load_reservation(conn, "reservation_id", reservation_id)
            if current is None:
                raise NotFound(f"reservation {reservation_id} not found")
            state = step(current)
            if state is current.state:
                return current  # idempotent repeat: nothing moves twice
            conn.execute(
                "UPDATE reservations SET state = ?, update_time_ms = ? WHERE reservation_id = ?",
                (state.value, self._now_ms(), reservation_id),
            )
            restock = state is ReservationState.RELEASED
            if restock:
                conn.executemany(
                    "UPDATE items SET available = available + ? WHERE sku = ?",
                    [(line.quantity, line.sku) for line in current.lines],
                )
        if restock:
            self._stock_changed()
        return replace(current, state=state)

    def _stock_changed(self) -> None:
        if self._cache is not None:
            self._cache.invalidate()

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _insert_reservation(self, conn: sqlite3.Connection, reservation: Reservation) -> None:
        now = self._now_ms()
        conn.execute(
            "INSERT INTO reservations (reservation_id, order_id, state, create_time_ms,"
            " update_time_ms) VALUES (?, ?, ?, ?, ?)",
            (reservation.reservation_id, reservation.order_id, reservation.state.value, now, now),
        )
        conn.executemany(
            "INSERT INTO reservation_lines (reservation_id, line_no, sku, quantity,"
            " unit_price_minor) VALUES (?, ?, ?, ?, ?)",
            [
                (reservation.reservation_id, index, line.sku, line.quantity, line.unit_price_minor)
                for index, line in enumerate(reservation.lines)
            ],
        )

    @staticmethod
    def _load_reservation(
        conn: sqlite3.Connection, key: Literal["order_id", "reservation_id"], value: str
    ) -> Reservation | None:
        row = conn.execute(_SELECT_RESERVATION[key], (value,)).fetchone()
        if row is None:
            return None
        lines = conn.execute(
            "SELECT sku, quantity, unit_price_minor FROM reservation_lines"
            " WHERE reservation_id = ? ORDER BY line_no",
            (row["reservation_id"],),
        ).fetchall()
        return Reservation(
            reservation_id=row["reservation_id"],
            order_id=row["order_id"],
            state=ReservationState(row["state"]),
            lines=tuple(
                ReservedLine(line["sku"], line["quantity"], line["unit_price_minor"])
                for line in lines
            ),
        )
