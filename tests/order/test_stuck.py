"""Stuck orders: the retry waits, and the flag after N runs, on a real SQLite file with a fake
clock and a fake RNG."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pytest

from meshkit.ids import new_id
from meshkit.sqlite import Database
from order_service.domain import (
    Order,
    Outcome,
    Reason,
    Status,
    Step,
    new_order,
    validate_create,
)
from order_service.saga import Run
from order_service.store import MIGRATIONS, SCHEMA, OrderStore, Stuck
from order_service.stuck import RetryPolicy, StuckOrders


class FixedRng:
    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


class Clock:
    def __init__(self) -> None:
        self.now_us = 1_000_000_000

    def __call__(self) -> int:
        return self.now_us


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> OrderStore:
    return OrderStore(Database(tmp_path / "order.db", SCHEMA, MIGRATIONS), clock=clock)


def compensating(store: OrderStore) -> Order:
    request = validate_create("cust-1", [("SKU-0001", 1)], new_id("req"))
    order = store.insert(new_order(new_id("ord"), request), fence=1)
    return store.save(
        replace(order, step=Step.RELEASE, failure_reason="payment declined: card"), fence=1
    )


def stuck_run(order: Order) -> Run:
    return Run(order, Reason.DEPENDENCY_REJECTED)


def test_the_wait_doubles_from_the_first_to_the_cap_half_of_it_jitter() -> None:
    policy = RetryPolicy(first_retry_s=5, max_retry_s=60)
    low, high = FixedRng(0.0), FixedRng(0.999999)
    assert [policy.retry_in_s(n, low) for n in range(1, 6)] == [2.5, 5, 10, 20, 30]
    assert [round(policy.retry_in_s(n, high), 3) for n in range(1, 6)] == [5, 10, 20, 40, 60]
    assert policy.retry_in_s(10_000, low) == 30  # no overflow, however many runs


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"first_retry_s": 0}, "first_retry_s"),
        ({"first_retry_s": 10, "max_retry_s": 5}, "max_retry_s"),
        ({"first_retry_s": 1, "attention_after": 0}, "attention_after"),
    ],
)
def test_a_bad_policy_is_refused_naming_the_field(fields: dict[str, float], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        RetryPolicy(**fields)  # type: ignore[arg-type]


def test_each_stuck_run_is_counted_and_puts_the_retry_further_off(
    store: OrderStore, clock: Clock
) -> None:
    order = compensating(store)
    stuck = StuckOrders(store, RetryPolicy(first_retry_s=5, max_retry_s=60), rng=FixedRng(0.0))

    first = stuck.record(stuck_run(order))
    clock.now_us += 1_000_000
    second = stuck.record(stuck_run(order))

    assert first == Stuck(runs=1, retry_time_us=1_002_500_000)
    assert second == Stuck(runs=2, retry_time_us=1_006_000_000)
    assert store.stuck(order.order_id) == second


def test_after_n_runs_the_order_needs_a_person_logged_once_and_moving_on_clears_it(
    store: OrderStore, caplog: pytest.LogCaptureFixture
) -> None:
    order = compensating(store)
    stuck = StuckOrders(
        store, RetryPolicy(first_retry_s=1, max_retry_s=10, attention_after=3), rng=FixedRng(0.5)
    )
    with caplog.at_level(logging.WARNING, logger="order_service.stuck"):
        marks = [stuck.record(stuck_run(order)) for _ in range(4)]

    assert [m.attention_reason if m else None for m in marks] == [
        "",
        "",
        "RELEASE has failed 3 runs in a row (dependency_rejected);"
        " compensating for: payment declined: card",
        "RELEASE has failed 4 runs in a row (dependency_rejected);"
        " compensating for: payment declined: card",
    ]
    flagged = [r.getMessage() for r in caplog.records if "needs attention" in r.getMessage()]
    assert flagged == [f"{order.order_id}: needs attention: {marks[2].attention_reason}"]  # type: ignore[union-attr]
    assert store.needing_attention() == 1

    store.save(replace(order, status=Status.FAILED, step=Step.DONE), fence=1)
    assert store.stuck(order.order_id) == Stuck()
    assert store.needing_attention() == 0


def test_the_flag_names_the_error_and_an_outage_brings_it_no_nearer(store: OrderStore) -> None:
    order = compensating(store)
    stuck = StuckOrders(
        store, RetryPolicy(first_retry_s=1, max_retry_s=10, attention_after=2), rng=FixedRng(0.5)
    )
    refused = Run(
        order,
        Reason.DEPENDENCY_UNAVAILABLE,
        stuck_on=Outcome.NOT_SENT,
        error="UNAVAILABLE: circuit breaker for inventory-compensations is open",
    )
    rejected = Run(
        order,
        Reason.DEPENDENCY_REJECTED,
        stuck_on=Outcome.REJECTED,
        error="PERMISSION_DENIED: not allowed",
    )

    outage = [stuck.record(refused) for _ in range(5)]
    assert [m.runs if m else None for m in outage] == [0] * 5  # waits, counts for nothing
    stuck.record(rejected)
    flagged = stuck.record(rejected)

    assert flagged is not None
    assert flagged.attention_reason == (
        "RELEASE has failed 2 runs in a row (dependency_rejected): PERMISSION_DENIED: not"
        " allowed; compensating for: payment declined: card"
    )


def test_runs_that_end_the_order_or_lose_the_lease_are_not_stuck_runs(store: OrderStore) -> None:
    order = compensating(store)
    stuck = StuckOrders(store, RetryPolicy(first_retry_s=1))
    done = replace(order, status=Status.FAILED, step=Step.DONE)

    assert stuck.record(Run(done, Reason.DECLINED)) is None
    assert stuck.record(Run(order, Reason.LEASE_LOST)) is None
    assert store.stuck(order.order_id) == Stuck()
