"""request_id claims, and the lease a won claim takes, against a real redis-server."""

from __future__ import annotations

import pytest
import redis

from meshkit.redis_client import connect
from order_service.claims import Claim, Claims, claim_key
from order_service.leases import Leases


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    return connect(redis_url)


def test_a_claim_is_won_once_and_withdrawn_only_by_its_owner(client: redis.Redis) -> None:
    claims, leases = Claims(client), Leases(client, lease_ms=10_000, keep_alive=False)
    mine, theirs = Claim("ord_a", "f1"), Claim("ord_b", "f2")
    assert claims.claim("req-1", mine, leases.lease(mine.order_id)) is None
    assert claims.claim("req-1", theirs, leases.lease(theirs.order_id)) == mine
    assert 0 < client.ttl(claim_key("req-1")) <= 86_400
    assert not claims.withdraw("req-1", theirs)
    assert claims.holder("req-1") == mine
    assert claims.withdraw("req-1", mine)
    assert claims.holder("req-1") is None


def test_winning_a_claim_takes_the_new_orders_lease_and_losing_it_takes_nothing(
    client: redis.Redis,
) -> None:
    now = [100.0]
    claims = Claims(client)
    leases = Leases(client, lease_ms=10_000, monotonic=lambda: now[0], keep_alive=False)
    mine, theirs = leases.lease("ord_a"), leases.lease("ord_b")
    assert claims.claim("req-1", Claim("ord_a", "f1"), mine) is None
    assert client.get(mine.key) == mine.token
    assert mine.fence == 1  # the new order's first fencing token, from the same script
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
    held = leases.lease("ord_a")
    assert held.acquire()
    with pytest.raises(redis.ResponseError, match="already held"):
        claims.claim("req-1", Claim("ord_a", "f1"), leases.lease("ord_a"))
    assert claims.holder("req-1") is None
    assert client.get(held.key) == held.token
