"""The order use cases behind the RPCs, with AIP-155 request_id semantics around the saga.

Timeline of one request_id, across threads and replicas::

    first:      claim request_id + customer's rate limit + lease new order_id (one Redis script)
                -> insert PENDING -> saga
                -> answer (the lease is released only if the order is still PENDING)
    duplicate:  finds the row (or the claim) -> same fingerprint? -> waits for the first to finish
                (bounded by its own deadline) -> answers the same order; else ALREADY_EXISTS
    orphan:     a duplicate finds the order PENDING, its lease free and no stuck run on record:
                its runner died mid-saga, so the duplicate takes the lease, stamps its fencing
                token on the row (a runner merely paused can no longer write) and finishes it

The claim is withdrawn when inventory rejects the lines (nothing is left behind) and when
SQLite's UNIQUE(request_id) already holds an order for the request, which catches what a Redis
that lost its keys would let through.

The rate limit charges a request_id that neither the order database nor a claim knows yet: a
retry of an accepted request (a lost answer, a duplicate sent while the saga runs) finds its row
or its claim, asks for nothing new and so is not charged again, and a client that retries as
AIP-155 asks it to is never refused its own order. A request refused by the limit left nothing
behind and is charged when it comes back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import redis

from meshkit import logs
from meshkit.errors import AlreadyExists, InvalidArgument, NotFound, Unavailable, Validator
from meshkit.ids import new_id
from meshkit.paging import check_page_size, cursor_int, cursor_str, decode_token, encode_token
from order_service import domain
from order_service.claims import Claim, Claims
from order_service.domain import NewOrder, Order, Reason, Status
from order_service.leases import Lease, Leases
from order_service.ports import FencedOut
from order_service.ratelimit import CustomerRateLimit
from order_service.saga import Run, Saga
from order_service.store import Cursor, DuplicateRequest, OrderStore
from order_service.stuck import StuckOrders

_log = logging.getLogger(__name__)

#: How often a duplicate looks whether the first request has finished.
POLL_INTERVAL_S = 0.02


class Orders:
    def __init__(
        self,
        store: OrderStore,
        claims: Claims,
        leases: Leases,
        saga: Saga,
        stuck: StuckOrders,
        *,
        rate_limit: CustomerRateLimit | None = None,
        on_outcome: Callable[[Status, Reason], None] = lambda status, reason: None,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._store = store
        self._claims = claims
        self._leases = leases
        self._saga = saga
        self._stuck = stuck
        #: None: no limit.
        self._rate_limit = rate_limit
        #: Told how each saga this class runs ended: what CreateOrder answers, PENDING too.
        self._on_outcome = on_outcome
        self._monotonic = monotonic
        self._sleep = sleep

    # --- CreateOrder ---------------------------------------------------------------------

    def create(self, request: NewOrder, wait_s: float) -> Order:
        """Runs the saga once per request_id; a duplicate waits up to ``wait_s`` for it."""
        deadline = self._monotonic() + wait_s
        with logs.context(request_id=request.request_id):
            existing = self._store.by_request_id(request.request_id)
            # Charged once per request: a start over (the state moved) is no new order.
            limit = self._rate_limit
            while True:
                order = self._create_once(request, deadline, existing, limit)
                if order is not None:
                    return order
                existing = self._store.by_request_id(request.request_id)
                limit = None

    def _create_once(
        self,
        request: NewOrder,
        deadline: float,
        existing: Order | None,
        limit: CustomerRateLimit | None,
    ) -> Order | None:
        """The order for this request, or None when the state moved under us: start over."""
        if existing is not None:
            self._check_same_payload(request, existing.fingerprint, existing.order_id)
            return self._await(Claim(existing.order_id, existing.fingerprint), request, deadline)
        mine = Claim(new_id(domain.ORDER_ID_PREFIX), request.fingerprint)
        lease = self._leases.lease(mine.order_id, customer_id=request.customer_id)
        with _redis_required():
            holder = self._claims.claim(request.request_id, mine, lease, limit=limit)
            if holder is None:
                order = None
                try:
                    order = self._run_new(request, mine, lease)
                    return order
                finally:
                    _let_go(lease, order)
        self._check_same_payload(request, holder.fingerprint, holder.order_id)
        return self._await(holder, request, deadline)

    def _run_new(self, request: NewOrder, claim: Claim, lease: Lease) -> Order | None:
        try:
            # Before the first call: from then on only this row says stock may be held.
            order = self._store.insert(domain.new_order(claim.order_id, request), fence=lease.fence)
        except DuplicateRequest:
            # Redis had lost the claim, and SQLite knows an order for this request_id.
            self._claims.withdraw(request.request_id, claim, customer_id=request.customer_id)
            return None
        except FencedOut as error:
            # Paused past the lease before the insert: a runner that took over has the
            # order. Start over, as a duplicate that waits for it.
            _log.warning("%s: lease lost before the insert: %s", claim.order_id, error)
            return None
        run = self._saga.run(order, lease, creating=True)
        self._ended(run)
        if run.invalid:
            # Inventory refused the lines (an unknown SKU) and the saga deleted the order:
            # free the request_id too, for a corrected order.
            try:
                self._claims.withdraw(request.request_id, claim, customer_id=request.customer_id)
            except redis.RedisError as error:  # a retry finds no row and takes the claim over
                _log.warning("%s: could not withdraw its claim: %s", order.order_id, error)
            raise InvalidArgument(run.invalid)
        return run.order

    def _await(self, holder: Claim, request: NewOrder, deadline: float) -> Order | None:
        """Waits for the holder's order to leave PENDING or the deadline, whichever comes first."""
        while True:
            order = self._store.get(holder.order_id)
            if order is not None:
                if order.status is not Status.PENDING or self._monotonic() >= deadline:
                    return order  # still PENDING at the deadline: the caller can GetOrder later
                with _redis_required():
                    idle = not self._leases.held(order.order_id, customer_id=order.customer_id)
                # Nobody is driving it. Read it again: a runner saves (or deletes) the order,
                # and records a stuck run, before it lets go of the lease.
                if idle:
                    order = self._store.get(holder.order_id)
                    if order is None:
                        continue
                    if order.status is not Status.PENDING or self._store.stuck(order.order_id).runs:
                        # Ended, or stuck (a compensation could not get through): recovery
                        # retries that on its own schedule; don't wait for it.
                        return order
                    # Its runner died mid-saga (or lost its lease): finish it here and now.
                    with _redis_required():
                        resumed = self._resume(order)
                    if resumed is not None:
                        return resumed
                    continue  # someone else took it over first: wait for them
            else:
                with _redis_required():
                    claimed = self._claims.holder(
                        request.request_id, customer_id=request.customer_id
                    )
                    if claimed != holder:
                        return None  # withdrawn (the lines were invalid): try it ourselves
                    order = self._take_over(holder, request)
                if order is not None:
                    return order
                if self._monotonic() >= deadline:
                    raise Unavailable(
                        f"request_id {request.request_id!r} is still being processed; retry"
                    )
            self._sleep(POLL_INTERVAL_S)

    def _take_over(self, holder: Claim, request: NewOrder) -> Order | None:
        """Runs a claimed request whose first runner died before inserting its order."""
        lease = self._leases.lease(holder.order_id, customer_id=request.customer_id)
        if not lease.acquire():
            return None  # the first runner is still at work
        order = None
        try:
            if self._store.get(holder.order_id) is not None:
                return None
            if self._claims.holder(request.request_id, customer_id=request.customer_id) != holder:
                return None
            _log.warning("%s: first runner is gone; taking over", holder.order_id)
            order = self._run_new(request, holder, lease)
            return order
        finally:
            _let_go(lease, order)

    def _resume(self, orphan: Order) -> Order | None:
        """Runs an orphaned PENDING order's saga from its step; None if its lease is taken."""
        order_id = orphan.order_id
        lease = self._leases.lease(order_id, customer_id=orphan.customer_id)
        if not lease.acquire(after=orphan.fence):
            return None
        order = None
        try:
            try:
                order = self._store.take(order_id, fence=lease.fence)
            except FencedOut:  # a newer runner (Redis lost the counter): wait for it
                return None
            if order is None or order.status is not Status.PENDING:
                return order
            _log.warning("%s: its runner is gone; resuming at %s", order_id, order.step)
            run = self._saga.run(order, lease)
            self._ended(run)
            order = run.order
            return order
        finally:
            _let_go(lease, order)

    def _ended(self, run: Run) -> None:
        """After a run, still under its lease: counts how it ended, and a stuck one's run."""
        self._stuck.record(run)
        self._on_outcome(run.order.status, run.reason)

    def attention(self, orders: list[Order]) -> dict[str, str]:
        """Why each of these orders needs a person, for those that do (PENDING ones only)."""
        pending = [order.order_id for order in orders if order.status is Status.PENDING]
        return self._store.attention_reasons(pending)

    @staticmethod
    def _check_same_payload(request: NewOrder, fingerprint: str, order_id: str) -> None:
        if fingerprint != request.fingerprint:
            raise AlreadyExists(
                f"request_id {request.request_id!r} was already used for a different order"
                f" ({order_id}); send a new request_id for a new order"
            )

    # --- GetOrder / ListOrders -------------------------------------------------------------

    def get(self, order_id: str) -> Order:
        v = Validator()
        domain.check_order_id(v, order_id)
        v.raise_if_invalid()
        order = self._store.get(order_id)
        if order is None:
            raise NotFound(f"order {order_id} not found")
        return order

    def list(self, *, customer_id: str, page_size: int, page_token: str) -> tuple[list[Order], str]:
        """One page, newest first, and the token for the next ("" on the last page)."""
        v = Validator()
        domain.check_customer_id(v, customer_id, required=False)
        size = check_page_size(v, page_size)
        after = None
        if page_token:
            try:
                after = _cursor(decode_token(page_token, customer_id))
            except InvalidArgument as error:
                for violation in error.violations:
                    v.add(violation.field, violation.description)
        v.raise_if_invalid()
        orders = self._store.page(customer_id=customer_id, limit=size + 1, after=after)
        if len(orders) <= size:
            return orders, ""
        last = orders[size - 1]
        token = encode_token({"t": last.create_time_us, "id": last.order_id}, customer_id)
        return orders[:size], token


def _cursor(raw: dict[str, Any]) -> Cursor:
    """The token's cursor, in the ranges SQLite and the order id format take."""
    return Cursor(cursor_int(raw, "t"), cursor_str(raw, "id", domain.ORDER_ID))


def _let_go(lease: Lease, order: Order | None) -> None:
    """Releases a request's lease on its order, unless the order finished.

    Duplicates and recovery look at the lease of PENDING orders only, so a finished order's
    lease guards nothing: it is forgotten (no longer renewed) and expires within its term,
    which saves CreateOrder a Redis round trip.
    """
    if order is None or order.status is Status.PENDING:
        lease.release()
    else:
        lease.forget()


@contextmanager
def _redis_required() -> Iterator[None]:
    """Turns a Redis outage into UNAVAILABLE: without claims and leases no saga may start."""
    try:
        yield
    except redis.RedisError as error:
        raise Unavailable(f"redis unavailable ({type(error).__name__})") from None
