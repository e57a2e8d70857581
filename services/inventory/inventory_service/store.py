"""Inventory persistence in SQLite, the truth. No Redis here: the read cache sits in front.

Stock changes (Reserve, Release) and new SKUs run in one ``BEGIN IMMEDIATE`` transaction each.
After one commits, the SKUs it changed go to every ``on_change`` listener (the cache drops
exactly those; see :class:`inventory_service.cache.ItemCache`).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Collection
from dataclasses import replace
from typing import Literal

from inventory_service import domain
from inventory_service.domain import (
    CatalogEntry,
    Item,
    ItemsChanged,
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
    """Items and reservations in SQLite; ``on_change`` hears of every committed item change."""

    def __init__(self, db: Database, *, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock
        self.on_change: list[Callable[[ItemsChanged], None]] = []

    def seed(self, catalog: tuple[CatalogEntry, ...], stock: int) -> int:
        """Adds catalog SKUs that are missing with ``stock`` units; existing stock is kept."""
        created: list[str] = []
        with self._db.write() as conn:
            for entry in catalog:
                cursor = conn.execute(
                    "INSERT OR IGNORE INTO items (sku, name, price_minor, available)"
                    " VALUES (?, ?, ?, ?)",
                    (entry.sku, entry.name, entry.price_minor, stock),
                )
                if cursor.rowcount:
                    created.append(entry.sku)
        if created:
            self._changed(created, created=True)
        return len(created)

    # --- reads --------------------------------------------------------------------------------

    def get_item(self, sku: str) -> Item | None:
        row = (
            self._db.read()
            .execute("SELECT sku, name, price_minor, available FROM items WHERE sku = ?", (sku,))
            .fetchone()
        )
        return None if row is None else Item(**dict(row))

    def get_items(self, skus: Collection[str]) -> dict[str, Item]:
        """The items of those ``skus`` that exist, in one query."""
        rows = (
            self._db.read()
            .execute(
                "SELECT sku, name, price_minor, available FROM items"
                " WHERE sku IN (SELECT value FROM json_each(?))",
                (json.dumps(list(skus)),),
            )
            .fetchall()
        )
        return {row["sku"]: Item(**dict(row)) for row in rows}

    def list_items(self, query: PageQuery) -> tuple[list[Item], bool]:
        """One page in SKU order, and whether more items follow it."""
        rows = (
            self._db.read()
            .execute(
                "SELECT sku, name, price_minor, available FROM items WHERE sku > ?"
                " ORDER BY sku LIMIT ?",
                (query.after, query.size + 1),
            )
            .fetchall()
        )
        return [Item(**dict(row)) for row in rows[: query.size]], len(rows) > query.size

    def all_skus(self) -> list[str]:
        return [row[0] for row in self._db.read().execute("SELECT sku FROM items").fetchall()]

    # --- stock changes ------------------------------------------------------------------------

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
        self._changed(skus)
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
            self._changed([line.sku for line in current.lines])
        return replace(current, state=state)

    def _changed(self, skus: Collection[str], *, created: bool = False) -> None:
        change = ItemsChanged(frozenset(skus), created)
        for listener in self.on_change:
            listener(change)

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
