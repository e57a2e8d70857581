"""Inventory persistence in SQLite, the truth; item reads may go through the Redis cache.

Stock changes (Reserve, Release) run in one ``BEGIN IMMEDIATE`` transaction each and
never read the cache. After a change commits, the cache is told, so every cached read
taken before it is unreachable (see :class:`inventory_service.cache.ItemCache`).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Literal

from inventory_service import domain
from inventory_service.cache import ItemCache
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
