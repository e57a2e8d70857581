"""The per-customer GCRA limit, as the script that admits a new order applies it, against a
real redis-server.

The customer's theoretical arrival time is their key's expiry, on Redis's own clock, so the
tests move time by bringing that expiry nearer: GCRA depends only on how far the arrival time
is ahead of now, so ``elapse(d)`` is the same as ``d`` passing. Rates are slow (an order per
100 s), so the real time a test takes never lets an order in by itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest
import redis

from meshkit.errors import PUSHBACK_HEADER, ResourceExhausted
from meshkit.ids import new_id
from meshkit.redis_client import connect
from meshkit.testing import wait_until
from order_service.claims import Claim, Claims
from order_service.leases import Leases
from order_service.ratelimit import (
    CustomerRateLimit,
    Outcome,
    RateLimitOptions,
    rate_limit,
    rate_limit_key,
)

#: One order per 100 s, after a burst of 3.
SLOW = RateLimitOptions(per_s=0.01, burst=3)
INTERVAL_S = 100.0


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    return connect(redis_url)


def elapse(client: redis.Redis, customer_id: str, seconds: float) -> None:
    """As if ``seconds`` passed for this customer's limit (its key keeps its TTL)."""
    key = rate_limit_key(customer_id)
    ahead_ms = client.pttl(key)
    assert ahead_ms > 0, "nothing to move: the customer has no state"
    left_ms = ahead_ms - round(seconds * 1000)
    if left_ms > 0:
        client.pexpire(key, left_ms)
    else:
        client.delete(key)  # the arrival time is past: as Redis would have expired it


class Admission:
    """New orders as CreateOrder admits them: each a new request_id through the claim script."""

    def __init__(
        self,
        client: redis.Redis,
        options: RateLimitOptions,
        on_outcome: Callable[[Outcome], None] = lambda outcome: None,
    ) -> None:
        self._claims = Claims(client)
        self._leases = Leases(client, keep_alive=False)
        self._limit = CustomerRateLimit(options, on_outcome=on_outcome)

    def admit(self, customer_id: str) -> None:
        order_id = new_id("ord")
        lease = self._leases.lease(order_id, customer_id=customer_id)
        claimed = self._claims.claim(new_id("req"), Claim(order_id, "f"), lease, limit=self._limit)
        assert claimed is None


def admitted(limit: Admission, customer_id: str) -> bool:
    try:
        limit.admit(customer_id)
    except ResourceExhausted:
        return False
    return True


def refusal(limit: Admission, customer_id: str) -> ResourceExhausted:
    with pytest.raises(ResourceExhausted) as refused:
        limit.admit(customer_id)
    return refused.value


def test_a_burst_then_the_steady_rate(client: redis.Redis) -> None:
    limit = Admission(client, SLOW)
    assert [admitted(limit, "alice") for _ in range(4)] == [True, True, True, False]
    for _ in range(3):  # from then on, one order per interval
        elapse(client, "alice", INTERVAL_S)
        assert [admitted(limit, "alice") for _ in range(2)] == [True, False]
    # A long pause gives back the whole burst, and no more.
    elapse(client, "alice", 10 * INTERVAL_S)
    assert [admitted(limit, "alice") for _ in range(4)] == [True, True, True, False]


def test_the_retry_after_is_when_the_next_order_fits(client: redis.Redis) -> None:
    limit = Admission(client, SLOW)
    for _ in range(3):
        limit.admit("alice")

    refused = refusal(limit, "alice")
    # The first of the burst has a full interval to go, less the test's own time.
    assert INTERVAL_S - 5 < refused.retry_after_ms / 1000 <= INTERVAL_S
    assert refused.trailing_metadata() == ((PUSHBACK_HEADER, str(refused.retry_after_ms)),)
    assert refused.message == (
        "customer 'alice' is over the order rate limit (0.01/s per customer, bursts"
        f" of 3); try again in {refused.retry_after_ms} ms"
    )

    elapse(client, "alice", refused.retry_after_ms / 1000 - INTERVAL_S / 2)
    halfway = refusal(limit, "alice")  # a refusal costs nothing: the wait only shrank
    assert 0 < halfway.retry_after_ms <= INTERVAL_S / 2 * 1000
    elapse(client, "alice", halfway.retry_after_ms / 1000)
    assert admitted(limit, "alice")


def test_customers_are_limited_apart(client: redis.Redis) -> None:
    limit = Admission(client, SLOW)
    for _ in range(3):
        limit.admit("alice")
    assert not admitted(limit, "alice")
    assert [admitted(limit, "bob") for _ in range(4)] == [True, True, True, False]
    assert sorted(client.keys("order:ratelimit:*")) == [
        b"order:ratelimit:{alice}",
        b"order:ratelimit:{bob}",
    ]


def test_the_key_lives_until_the_customer_is_back_at_a_full_burst(client: redis.Redis) -> None:
    limit = Admission(client, SLOW)
    key = rate_limit_key("alice")
    for placed in range(1, 4):
        limit.admit("alice")
        term_ms = placed * INTERVAL_S * 1000
        assert term_ms - 5_000 < client.pttl(key) <= term_ms
    ttl_ms = client.pttl(key)
    refusal(limit, "alice")
    assert client.pttl(key) <= ttl_ms  # a refusal writes nothing

    fast = Admission(client, RateLimitOptions(per_s=1000, burst=2))
    fast.admit("bob")
    # Idle for 1 ms, bob is back at a full burst, and his key is gone.
    wait_until(lambda: not client.exists(rate_limit_key("bob")), timeout_s=5, what="expiry")


def _spent(client: redis.Redis, admit: Callable[[], object]) -> dict[str, int]:
    """The commands ``admit`` made Redis run (INFO commandstats, the scripts' own included)."""

    def calls() -> dict[str, int]:
        stats = client.info("commandstats")
        names = ("evalsha", "time", "get", "set", "pttl", "del")
        return {name: int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in names}

    before = calls()
    with contextlib.suppress(ResourceExhausted):  # a refusal's commands are counted too
        admit()
    return {name: n - before[name] for name, n in calls().items() if n - before[name]}


def test_an_idle_customer_is_read_and_charged_in_one_command(client: redis.Redis) -> None:
    limit = Admission(client, SLOW)
    limit.admit("warm")  # loads the script

    spent = _spent(client, lambda: limit.admit("alice"))
    # SET: the claim, the customer's arrival time (NX: none, so charged), the lease; no TIME.
    assert spent == {"evalsha": 1, "set": 3}
    ttl_ms = client.pttl(rate_limit_key("alice"))
    assert INTERVAL_S * 1000 - 5_000 < ttl_ms <= INTERVAL_S * 1000


def test_a_customer_mid_burst_pays_a_pttl_and_a_set_more_and_one_interval(
    client: redis.Redis,
) -> None:
    limit = Admission(client, SLOW)
    limit.admit("alice")
    key = rate_limit_key("alice")
    before = client.pexpiretime(key)

    spent = _spent(client, lambda: limit.admit("alice"))
    # The arrival time's SET NX finds the key; its PTTL, and one more SET pushes it on.
    assert spent == {"evalsha": 1, "set": 4, "pttl": 1}
    # One interval on, to the millisecond (the PTTL it built on was read a few ms after).
    assert abs(client.pexpiretime(key) - (before + INTERVAL_S * 1000)) <= 2
    term_ms = 2 * INTERVAL_S * 1000
    assert term_ms - 5_000 < client.pttl(key) <= term_ms


def test_a_refusal_leaves_the_customers_arrival_time_and_its_expiry_as_they_were(
    client: redis.Redis,
) -> None:
    limit = Admission(client, SLOW)
    for _ in range(3):
        limit.admit("alice")
    key = rate_limit_key("alice")
    stored = (client.get(key), client.pexpiretime(key))

    spent = _spent(client, lambda: limit.admit("alice"))
    # The claim, taken and deleted again; the arrival time, a SET NX that wrote nothing and
    # its PTTL.
    assert spent == {"evalsha": 1, "set": 2, "pttl": 1, "del": 1}
    assert (client.get(key), client.pexpiretime(key)) == stored
    assert len(client.keys("order:idem:*")) == 3  # the admitted orders' claims only
    assert len(client.keys("order:lease:*")) == 3


def test_the_key_carries_the_customer_as_a_hash_tag() -> None:
    assert rate_limit_key("alice") == "order:ratelimit:{alice}"


def test_each_decision_is_reported(client: redis.Redis) -> None:
    outcomes: list[Outcome] = []
    limit = Admission(client, SLOW, outcomes.append)
    for _ in range(4):
        admitted(limit, "alice")
    assert outcomes == [Outcome.ALLOWED] * 3 + [Outcome.LIMITED]


def test_a_rate_of_zero_is_no_limit() -> None:
    assert rate_limit(RateLimitOptions(per_s=0)) is None
    with pytest.raises(ValueError, match="pass no limit"):
        CustomerRateLimit(RateLimitOptions(per_s=0))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"per_s": -1}, "per_s must be in 0..1000000, got -1"),
        ({"per_s": 1, "burst": 0}, "burst must be >= 1, got 0"),
    ],
)
def test_bad_options_are_refused(options: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RateLimitOptions(**options)  # type: ignore[arg-type]  # int and float fields
