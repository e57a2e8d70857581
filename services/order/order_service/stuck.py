"""PENDING orders a saga run could not move: when recovery tries them again, and when a person
must look.

A run that ends with its order still at the same step (a compensation refused or unanswered,
a commit that neither went through nor came back) is counted; recovery waits longer after each
such run (doubling from ``first_retry_s`` to ``max_retry_s``, with jitter so a backlog does not
retry in step), and after ``attention_after`` runs in a row the order is flagged: it stays
PENDING, since stock may be held or money taken, but a gauge, an alert and GetOrder say it
needs a person. The order moving on (the store's save) clears all of it.

A run whose call the resilience library refused before it left (NOT_SENT: the dependency's
breaker is open) backs off like the others but does not bring the flag nearer: that is an
outage, which the dependency's own alerts report, and the order moves as soon as it ends; it
is the order's own calls failing, answered or not, that a person must look at.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

from order_service.domain import Order, Outcome, Reason, Status
from order_service.saga import Run
from order_service.store import OrderStore, Stuck
from resilience import Rng, WaitFullJitter

_log = logging.getLogger(__name__)

DEFAULT_ATTENTION_AFTER = 5
DEFAULT_MAX_RETRY_S = 300.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How long recovery leaves a stuck order alone, and after how many runs it is flagged."""

    #: The wait after the first stuck run (half of it fixed, half jitter); doubles each run.
    first_retry_s: float
    #: The longest wait, reached after a few runs; flagged orders are retried at about this rate.
    max_retry_s: float = DEFAULT_MAX_RETRY_S
    attention_after: int = DEFAULT_ATTENTION_AFTER

    def __post_init__(self) -> None:
        if not 0 < self.first_retry_s <= self.max_retry_s <= 3600:
            raise ValueError(
                f"need 0 < first_retry_s ({self.first_retry_s}) <= max_retry_s"
                f" ({self.max_retry_s}) <= 3600"
            )
        if self.attention_after < 1:
            raise ValueError(f"attention_after must be >= 1, got {self.attention_after}")

    def retry_in_s(self, runs: int, rng: Rng) -> float:
        """The wait after the ``runs``-th stuck run in a row: half the cap, plus up to half."""
        half = WaitFullJitter(
            initial=self.first_retry_s / 2, maximum=self.max_retry_s / 2, multiplier=2
        )
        return half.cap(runs) + half(runs, rng)


def attention_reason(order: Order, runs: int, why: Reason, error: str = "") -> str:
    """What a flagged order says: the step that keeps failing, how often, why, and what for."""
    text = f"{order.step.value} has failed {runs} runs in a row ({why.value})"
    if error:
        text += f": {error}"
    if order.failure_reason:
        text += f"; compensating for: {order.failure_reason}"
    return text


class StuckOrders:
    """Records the runs that left an order where it was; whoever ran the saga calls it while
    still holding the order's lease, so its counts are never written twice at once."""

    def __init__(self, store: OrderStore, policy: RetryPolicy, *, rng: Rng | None = None) -> None:
        self._store = store
        self._policy = policy
        self._rng = rng or random.Random()

    @property
    def policy(self) -> RetryPolicy:
        return self._policy

    def record(self, run: Run) -> Stuck | None:
        """Counts ``run`` if it left its order stuck and returns what is now stored; None for a
        run that ended the order or lost its lease (the next runner just goes on)."""
        order = run.order
        if order.status is not Status.PENDING or run.reason is Reason.LEASE_LOST:
            return None
        before = self._store.stuck(order.order_id)
        # An outage (the call never left) waits as the last run did, and counts for nothing.
        runs = before.runs + (run.stuck_on is not Outcome.NOT_SENT)
        flagged = runs >= self._policy.attention_after
        retry_in_us = int(self._policy.retry_in_s(max(runs, 1), self._rng) * 1_000_000)
        now = Stuck(
            runs=runs,
            retry_time_us=self._store.now_us() + retry_in_us,
            attention_reason=(
                attention_reason(order, runs, run.reason, run.error) if flagged else ""
            ),
        )
        if not self._store.mark_stuck(order.order_id, now):
            return None  # it ended meanwhile (a runner whose lease ran out finished it)
        if flagged and not before.attention_reason:
            _log.warning("%s: needs attention: %s", order.order_id, now.attention_reason)
        return now
