"""The payments table, shared by the v1 and v2 deployments through one SQLite file.

Every write is one ``BEGIN IMMEDIATE`` transaction that reads, decides and writes,
so two processes racing on the same request_id queue on the write lock and the
second one sees the first one's row; ``UNIQUE(request_id)`` is the backstop.
"""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from meshkit.errors import AlreadyExists, NotFound
from meshkit.ids import new_id
from meshkit.sqlite import Database

from .domain import (
    ChargeRequest,
    Money,
    Payment,
    PaymentState,
    after_refund,
    after_void,
    decline_reason,
    initial_state,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS payments (
    payment_id        TEXT PRIMARY KEY,
    request_id        TEXT NOT NULL UNIQUE,
    order_id          TEXT NOT NULL,
    customer_id       TEXT NOT NULL,
    amount_minor      INTEGER NOT NULL CHECK (amount_minor >= 0),
    currency          TEXT NOT NULL,
    state             TEXT NOT NULL
                      CHECK (state IN ('CAPTURED', 'DECLINED', 'REFUNDED', 'VOIDED')),
    version           TEXT NOT NULL,
    decline_reason    TEXT NOT NULL DEFAULT '',
    refund_request_id TEXT,
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS payments_by_refund_request
    ON payments (refund_request_id) WHERE refund_request_id IS NOT NULL;
"""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _payment(row: sqlite3.Row) -> Payment:
    return Payment(
        payment_id=row["payment_id"],
        request_id=row["request_id"],
        order_id=row["order_id"],
        customer_id=row["customer_id"],
        amount=Money(row["currency"], row["amount_minor"]),
        state=PaymentState(row["state"]),
        version=row["version"],
        decline_reason=row["decline_reason"],
        refund_request_id=row["refund_request_id"],
    )


class PaymentStore:
    """Payments as written by one deployment (``version``), read from the shared file."""

    def __init__(self, path: Path, *, version: str) -> None:
        self._db = Database(path, SCHEMA)
        self._version = version

    def ping(self) -> None:
        self._db.ping()

    def get(self, payment_id: str) -> Payment:
        row = (
            self._db.read()
            .execute("SELECT * FROM payments WHERE payment_id = ?", (payment_id,))
            .fetchone()
        )
        if row is None:
            raise NotFound(f"payment {payment_id} not found")
        return _payment(row)

    def charge(self, request: ChargeRequest) -> Payment:
        """The payment for ``request.request_id``: the existing one, or a new CAPTURED/DECLINED."""
        with self._db.write() as conn:
            existing = self._by_request_id(conn, request.request_id)
            if existing is not None:
                if not existing.same_charge(request):
                    raise AlreadyExists(
                        f"request_id {request.request_id!r} was already used for a different"
                        f" charge (payment {existing.payment_id}, order {existing.order_id})"
                    )
                return existing
            payment = Payment(
                payment_id=new_id("pay"),
                request_id=request.request_id,
                order_id=request.order_id,
                customer_id=request.customer_id,
                amount=request.amount,
                state=initial_state(request.customer_id),
                version=self._version,
                decline_reason=decline_reason(request.customer_id),
            )
            self._insert(conn, payment)
            return payment

    def refund(self, payment_id: str, request_id: str) -> Payment:
        with self._db.write() as conn:
            row = conn.execute(
                "SELECT * FROM payments WHERE payment_id = ?", (payment_id,)
            ).fetchone()
            if row is None:
                raise NotFound(f"payment {payment_id} not found")
            payment = _payment(row)
            other = conn.execute(
                "SELECT payment_id FROM payments WHERE refund_request_id = ? AND payment_id != ?",
                (request_id, payment_id),
            ).fetchone()
            if other is not None:
                raise AlreadyExists(
                    f"request_id {request_id!r} was already used to refund payment"
                    f" {other['payment_id']}"
                )
            state = after_refund(payment)
            if state is payment.state:
                return payment
            return self._move(conn, payment, state, refund_request_id=request_id)

    def void(self, charge_request_id: str, order_id: str) -> Payment:
        """Makes sure the charge ``charge_request_id`` never moves money (see VoidCharge)."""
        with self._db.write() as conn:
            existing = self._by_request_id(conn, charge_request_id)
            if existing is None:
                # The Charge never arrived (or is still on its way): the tombstone claims the
                # request_id so that a late Charge finds it and captures nothing.
                tombstone = Payment(
                    payment_id=new_id("pay"),
                    request_id=charge_request_id,
                    order_id=order_id,
                    customer_id="",
                    amount=Money("", 0),
                    state=PaymentState.VOIDED,
                    version=self._version,
                )
                self._insert(conn, tombstone)
                return tombstone
            if existing.order_id != order_id:
                raise AlreadyExists(
                    f"charge_request_id {charge_request_id!r} belongs to order"
                    f" {existing.order_id}, not {order_id}"
                )
            state = after_void(existing)
            if state is existing.state:
                return existing
            return self._move(conn, existing, state, refund_request_id=None)

    @staticmethod
    def _by_request_id(conn: sqlite3.Connection, request_id: str) -> Payment | None:
        row = conn.execute("SELECT * FROM payments WHERE request_id = ?", (request_id,)).fetchone()
        return None if row is None else _payment(row)

    @staticmethod
    def _insert(conn: sqlite3.Connection, payment: Payment) -> None:
        now = _now()
        conn.execute(
            "INSERT INTO payments (payment_id, request_id, order_id, customer_id, amount_minor,"
            " currency, state, version, decline_reason, refund_request_id, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                payment.payment_id,
                payment.request_id,
                payment.order_id,
                payment.customer_id,
                payment.amount.amount_minor,
                payment.amount.currency_code,
                payment.state.value,
                payment.version,
                payment.decline_reason,
                payment.refund_request_id,
                now,
                now,
            ),
        )

    @staticmethod
    def _move(
        conn: sqlite3.Connection,
        payment: Payment,
        state: PaymentState,
        *,
        refund_request_id: str | None,
    ) -> Payment:
        conn.execute(
            "UPDATE payments SET state = ?, refund_request_id = ?, updated_at = ?"
            " WHERE payment_id = ?",
            (state.value, refund_request_id, _now(), payment.payment_id),
        )
        return replace(payment, state=state, refund_request_id=refund_request_id)
