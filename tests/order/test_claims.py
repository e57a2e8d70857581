"""request_id claims, and the lease a won claim takes, against a real redis-server."""

from __future__ import annotations

import pytest
import redis
from redis.crc import key_slot

from meshkit.errors import ResourceExhausted
from meshkit.redis_client import connect
from order_service.claims import Claim, Claims, claim_key
from order_service.leases import FIRST_FENCE, Leases, fence_key, lease_key
from order_service.ratelimit import CustomerRateLimit, RateLimitOptions, rate_limit_key

C = "cust-1"


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    return connect(redis_url)


def test_a_claim_is_won_once_and_withdrawn_only_by_its_owner(client: redis.Redis) -> None:
    claims, leases = Claims(client), Leases(client, lease_ms=10_000, keep_alive=False)
    mine, theirs = Claim("ord_a", "f1"), Claim("ord_b", "f2")
    assert claims.claim("req-1", mine, leases.lease(mine.order_id, customer_id=C)) is None
    assert claims.claim("req-1", theirs, leases.lease(theirs.order_id, customer_id=C)) == mine
    assert 0 < client.ttl(claim_key(C, "req-1")) <= 86_400
    assert not claims.withdraw("req-1", theirs, customer_id=C)
    assert claims.holder("req-1", customer_id=C) == mine
    assert claims.withdraw("req-1", mine, customer_id=C)
    assert claims.holder("req-1", customer_id=C) is None


def test_winning_a_claim_takes_the_new_orders_lease_and_losing_it_takes_nothing(
    client: redis.Redis,
) -> None:
    now = [100.0]
    claims = Claims(client)
    leases = Leases(client, lease_ms=10_000, monotonic=lambda: now[0], keep_alive=False)
    mine, theirs = leases.lease("ord_a", customer_id=C), leases.lease("ord_b", customer_id=C)
    assert claims.claim("req-1", Claim("ord_a", "f1"), mine) is None
    assert client.get(mine.key) == mine.token
    assert mine.fence == FIRST_FENCE  # a new order's first grant: no counter to ask
    assert not client.exists(mine.fence_key)
    assert 9_000 < client.pttl(mine.key) <= 10_000
    client.pexpire(mine.key, 5_000)
    assert mine.keep()  # confirmed by the claim itself: no round trip, the term is untouched
    assert client.pttl(mine.key) <= 5_000

    assert claims.claim("req-1", Claim("ord_b", "f2"), theirs) is not None
    assert not client.exists(theirs.key)
    assert (theirs.fence, client.exists(theirs.fence_key)) == (0, 0)
    now[0] += 2.0
    assert not theirs.keep()  # never taken, so never trusted


def test_a_claim_never_takes_a_lease_someone_holds(client: redis.Redis) -> None:
    claims, leases = Claims(client), Leases(client, lease_ms=10_000, keep_alive=False)
    held = leases.lease("ord_a", customer_id=C)
    assert held.acquire()
    with pytest.raises(redis.ResponseError, match="already held"):
        claims.claim("req-1", Claim("ord_a", "f1"), leases.lease("ord_a", customer_id=C))
    assert claims.holder("req-1", customer_id=C) is None
    assert client.get(held.key) == held.token


def test_every_later_grant_of_an_admitted_order_is_fenced_above_its_first(
    client: redis.Redis,
) -> None:
    claims, leases = Claims(client), Leases(client, lease_ms=10_000, keep_alive=False)
    first = leases.lease("ord_a", customer_id=C)
    assert claims.claim("req-1", Claim("ord_a", "f1"), first) is None
    client.delete(first.key)  # its runner paused past its lease, before the order's insert

    # A duplicate taking the claimed request over knows no row, so no token: still above.
    takeover = leases.lease("ord_a", customer_id=C)
    assert takeover.acquire()
    assert takeover.fence == FIRST_FENCE + 1
    client.delete(takeover.key)
    # Recovery, from the row the first runner wrote, after Redis lost the counter.
    client.delete(takeover.fence_key)
    recovery = leases.lease("ord_a", customer_id=C)
    assert recovery.acquire(after=first.fence)
    assert recovery.fence == FIRST_FENCE + 1


def test_a_refused_lease_undoes_the_claim_and_the_charge(client: redis.Redis) -> None:
    claims, leases = Claims(client), Leases(client, lease_ms=10_000, keep_alive=False)
    limit = CustomerRateLimit(RateLimitOptions(per_s=0.01, burst=2))
    held = leases.lease("ord_a", customer_id=C)
    assert held.acquire()
    with pytest.raises(redis.ResponseError, match="already held"):
        claims.claim(
            "req-1", Claim("ord_a", "f1"), leases.lease("ord_a", customer_id=C), limit=limit
        )
    assert claims.holder("req-1", customer_id=C) is None
    assert not client.exists(rate_limit_key(C))  # an idle customer: still no charge

    assert (
        claims.claim(
            "req-2", Claim("ord_b", "f2"), leases.lease("ord_b", customer_id=C), limit=limit
        )
        is None
    )
    tat = client.get(rate_limit_key(C))
    with pytest.raises(redis.ResponseError, match="already held"):
        claims.claim(
            "req-3", Claim("ord_a", "f3"), leases.lease("ord_a", customer_id=C), limit=limit
        )
    assert client.get(rate_limit_key(C)) == tat  # mid-burst: charged only after the lease


def test_every_key_of_the_admission_script_is_in_the_customers_slot() -> None:
    keys = [claim_key(C, "req-1"), lease_key(C, "ord_a"), fence_key(C, "ord_a"), rate_limit_key(C)]
    assert {key_slot(key.encode()) for key in keys} == {key_slot(C.encode())}


def test_the_claim_charges_the_rate_limit_and_over_it_claims_nothing(client: redis.Redis) -> None:
    claims, leases = Claims(client), Leases(client, lease_ms=10_000, keep_alive=False)
    outcomes: list[str] = []
    limit = CustomerRateLimit(
        RateLimitOptions(per_s=0.01, burst=1), on_outcome=lambda o: outcomes.append(o.value)
    )
    first = leases.lease("ord_a", customer_id=C)
    assert claims.claim("req-1", Claim("ord_a", "f1"), first, limit=limit) is None
    assert client.exists(rate_limit_key(C))

    refused = leases.lease("ord_b", customer_id=C)
    with pytest.raises(ResourceExhausted, match="over the order rate limit"):
        claims.claim("req-2", Claim("ord_b", "f2"), refused, limit=limit)
    assert claims.holder("req-2", customer_id=C) is None
    assert not client.exists(refused.key)
    assert (refused.fence, client.exists(refused.fence_key)) == (0, 0)

    # A duplicate of the claimed request is answered with its claim, over the limit or not.
    again = leases.lease("ord_c", customer_id=C)
    assert claims.claim("req-1", Claim("ord_c", "f1"), again, limit=limit) == Claim("ord_a", "f1")
    assert outcomes == ["allowed", "limited"]


def test_with_no_limit_the_claim_leaves_no_rate_limit_key(client: redis.Redis) -> None:
    claims, leases = Claims(client), Leases(client, lease_ms=10_000, keep_alive=False)
    assert claims.claim("req-1", Claim("ord_a", "f1"), leases.lease("ord_a", customer_id=C)) is None
    assert not client.exists(rate_limit_key(C))
