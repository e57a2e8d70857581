"""Finishes or compensates the orders a crashed or stuck saga left PENDING: at start, then often.

Only orders untouched for ``age_s`` are candidates, and each one is driven under its
per-order lease, so a saga still running in a request (here or on another replica) is
never run twice at once. The saga resumes at the persisted step: forward steps go
forward (every call is idempotent by order_id or request_id), compensations continue.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import redis

from order_service.domain import Reason, Status
from order_service.leases import Leases
from order_service.saga import Saga
from order_service.store import OrderStore

_log = logging.getLogger(__name__)

DEFAULT_BATCH = 100


class Recovery:
    def __init__(
        self,
        store: OrderStore,
        leases: Leases,
        saga: Saga,
        *,
        interval_s: float,
        age_s: float,
        batch: int = DEFAULT_BATCH,
        on_outcome: Callable[[Status, Reason], None] = lambda status, reason: None,
    ) -> None:
        self._store = store
        self._leases = leases
        self._saga = saga
        self._interval_s = interval_s
        self._age_us = int(age_s * 1_000_000)
        self._batch = batch
        #: Told of each order recovery ends; one it leaves PENDING was counted by its request.
        self._on_outcome = on_outcome
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> int:
        """One pass over the idle PENDING orders; returns how many it drove to an end."""
        finished = 0
        for candidate in self._store.pending(idle_for_us=self._age_us, limit=self._batch):
            if self._stop.is_set():
                break
            lease = self._leases.lease(candidate.order_id)
            try:
                if not lease.acquire():
                    continue  # someone is driving it right now
            except redis.RedisError as error:
                _log.warning("recovery paused: redis unavailable (%s)", error)
                break
            try:
                order = self._store.get(candidate.order_id)  # it may have moved before we got here
                if order is None or order.status is not Status.PENDING:
                    continue
                _log.info("%s: resuming at %s", order.order_id, order.step)
                run = self._saga.run(order, lease)
                if run.order.status is not Status.PENDING:
                    self._on_outcome(run.order.status, run.reason)
                    finished += 1
            except Exception:
                _log.exception("%s: recovery failed; will retry", candidate.order_id)
            finally:
                lease.release()
        return finished

    def start(self) -> None:
        """Runs a pass now (start-up) and then every ``interval_s`` until :meth:`stop`."""
        self._thread = threading.Thread(target=self._loop, name="order-recovery", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:  # the loop must outlive a bad pass (e.g. the database was busy)
                _log.exception("recovery pass failed")
            self._stop.wait(self._interval_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
