"""Finishes or compensates the orders a crashed or stuck saga left PENDING: at start, then often.

Only orders untouched for ``age_s`` are candidates, and each one is driven under its
per-order lease, so a saga still running in a request (here or on another replica) is
never run twice at once, and stamps the lease's fencing token on the order's row before the
first call, so a runner paused past its lease cannot write any more. The saga resumes at
the persisted step: forward steps go forward (every call is idempotent by order_id or
request_id), compensations continue.

A pass goes through every due order, a page at a time, ``workers`` at once. The next pass
comes when the next order falls due (an order's idle age, or a stuck order's retry time, see
:mod:`order_service.stuck`), at the latest after ``interval_s``; a due order whose lease is
held (a runner at a long step, or one that died) is looked at again within a quarter of a
lease term, when a dead runner's lease has run out. The start-up pass takes stuck orders
too, whatever their retry time: a restart is when a fix (a setting, a dependency back) lands.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import redis

from meshkit import logs
from order_service.domain import Order, Reason, Status
from order_service.leases import Leases
from order_service.ports import FencedOut
from order_service.saga import Saga
from order_service.store import OrderStore
from order_service.stuck import StuckOrders

_log = logging.getLogger(__name__)

DEFAULT_WORKERS = 4
#: Orders read per query; a pass reads pages until none is left.
PAGE_SIZE = 100
#: The shortest wait between passes, so orders falling due together are taken together.
MIN_WAIT_S = 0.05


class End(enum.Enum):
    """How recovery's look at one order ended."""

    FINISHED = "finished"  # driven to CONFIRMED or FAILED
    LEFT = "left"  # run, and still PENDING (stuck: retried later, see order_service.stuck)
    HELD = "held"  # someone holds its lease
    GONE = "gone"  # it had ended (or vanished) before we got its lease
    FAILED = "failed"  # an error of ours; the next pass tries again
    REDIS_DOWN = "redis_down"  # no lease could be asked for


@dataclass(frozen=True, slots=True)
class Pass:
    """What one pass did, and how long the loop waits before the next one."""

    ends: Counter[End]
    wait_s: float

    @property
    def finished(self) -> int:
        return self.ends[End.FINISHED]


class Recovery:
    def __init__(
        self,
        store: OrderStore,
        leases: Leases,
        saga: Saga,
        stuck: StuckOrders,
        *,
        interval_s: float,
        age_s: float,
        workers: int = DEFAULT_WORKERS,
        on_outcome: Callable[[Status, Reason], None] = lambda status, reason: None,
        on_attention: Callable[[int], None] = lambda flagged: None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self._store = store
        self._leases = leases
        self._saga = saga
        self._stuck = stuck
        self._interval_s = interval_s
        self._age_us = int(age_s * 1_000_000)
        #: Told of each order recovery ends; one it leaves PENDING was counted by its request.
        self._on_outcome = on_outcome
        #: Told after each pass how many PENDING orders need a person (the gauge).
        self._on_attention = on_attention
        # One pool for the process's life: each of its threads keeps its SQLite connection.
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="order-recovery")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self, *, ignore_retry_times: bool = False) -> Pass:
        """One pass over every due PENDING order; ``ignore_retry_times`` takes the stuck ones
        too (the start-up pass)."""
        started_us = self._store.now_us()
        retry_before_us = None if ignore_retry_times else started_us
        ends: Counter[End] = Counter()
        after: tuple[int, str] | None = None
        while not self._stop.is_set():
            page = self._store.due(
                idle_since_us=started_us - self._age_us,
                retry_before_us=retry_before_us,
                limit=PAGE_SIZE,
                after=after,
            )
            page_ends = list(self._pool.map(self._recover, page))
            ends.update(page_ends)
            if End.REDIS_DOWN in page_ends:
                _log.warning("recovery paused: redis unavailable")
                break
            if len(page) < PAGE_SIZE:
                break
            after = (page[-1].update_time_us, page[-1].order_id)
        self._on_attention(self._store.needing_attention())
        return Pass(ends, self._wait_after(ends, started_us))

    def _wait_after(self, ends: Counter[End], started_us: int) -> float:
        wait_s = self._interval_s
        if ends[End.HELD]:  # a dead runner's lease runs out within one term
            wait_s = min(wait_s, self._leases.lease_ms / 4000)
        # Orders due from the pass's start on: those that fell due while it ran (soon), young
        # orders in flight, stuck ones at their retry time. Due ones it left are counted above.
        next_due_us = self._store.next_due_us(idle_for_us=self._age_us, after_us=started_us)
        if next_due_us is not None:
            wait_s = min(wait_s, (next_due_us - self._store.now_us()) / 1_000_000)
        return max(wait_s, MIN_WAIT_S)

    def _recover(self, candidate: Order) -> End:
        if self._stop.is_set():
            return End.GONE
        with logs.context(order_id=candidate.order_id):
            return self._recover_one(candidate)

    def _recover_one(self, candidate: Order) -> End:
        order_id = candidate.order_id
        lease = self._leases.lease(order_id, customer_id=candidate.customer_id)
        try:
            if not lease.acquire(after=candidate.fence):
                return End.HELD  # someone is driving it right now, or its runner just died
        except redis.RedisError as error:
            _log.debug("%s: no lease: %s", order_id, error)
            return End.REDIS_DOWN
        try:
            try:  # it may have moved before we got here
                order = self._store.take(order_id, fence=lease.fence)
            except FencedOut:  # a newer runner has it (Redis lost the counter)
                return End.HELD
            if order is None or order.status is not Status.PENDING:
                return End.GONE
            flagged = self._store.stuck(order_id).attention_reason
            _log.info("%s: resuming at %s", order_id, order.step)
            run = self._saga.run(order, lease)
            if run.order.status is Status.PENDING:
                self._stuck.record(run)
                return End.LEFT
            self._on_outcome(run.order.status, run.reason)
            if flagged:
                _log.info("%s: no longer needs attention: %s", order_id, run.order.status)
            return End.FINISHED
        except Exception:
            _log.exception("%s: recovery failed; will retry", order_id)
            return End.FAILED
        finally:
            lease.release()

    def start(self) -> None:
        """Runs a pass now (start-up) and then as :class:`Pass` says until :meth:`stop`."""
        self._thread = threading.Thread(target=self._loop, name="order-recovery", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        first = True
        while not self._stop.is_set():
            wait_s = self._interval_s
            try:
                wait_s = self.run_once(ignore_retry_times=first).wait_s
            except Exception:  # the loop must outlive a bad pass (e.g. the database was busy)
                _log.exception("recovery pass failed")
            first = False
            self._stop.wait(wait_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._pool.shutdown(wait=True, cancel_futures=True)
