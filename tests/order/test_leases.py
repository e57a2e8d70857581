"""Saga leases against a real redis-server."""

from __future__ import annotations

import pytest
import redis

from meshkit.redis_client import connect
from meshkit.testing import wait_until
from order_service.leases import FENCE_TTL_S, Leases


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    return connect(redis_url)


def test_a_lease_is_exclusive_and_only_its_holder_extends_or_releases_it(
    client: redis.Redis,
) -> None:
    leases = Leases(client, lease_ms=10_000, keep_alive=False)
    first, second = (
        leases.lease("ord_1", customer_id="cust-1"),
        leases.lease("ord_1", customer_id="cust-1"),
    )
    assert first.acquire()
    assert not second.acquire()
    assert not second.extend()
    second.release()  # not its lease: a no-op
    assert client.get(first.key) == first.token
    client.pexpire(first.key, 50)
    assert first.extend()
    assert 5_000 < client.pttl(first.key) <= 10_000
    first.release()
    assert second.acquire()


def test_an_expired_lease_cannot_be_extended_or_released_over_its_successor(
    client: redis.Redis,
) -> None:
    leases = Leases(client, lease_ms=10_000, keep_alive=False)
    stale, successor = (
        leases.lease("ord_1", customer_id="cust-1"),
        leases.lease("ord_1", customer_id="cust-1"),
    )
    assert stale.acquire()
    client.delete(stale.key)  # what expiry does
    assert successor.acquire()
    assert not stale.extend()
    stale.release()
    assert client.get(successor.key) == successor.token


def test_keep_trusts_a_fresh_confirmation_and_asks_redis_once_it_is_old(
    client: redis.Redis,
) -> None:
    now = [100.0]
    leases = Leases(
        client, lease_ms=10_000, recheck_s=1.0, monotonic=lambda: now[0], keep_alive=False
    )
    lease = leases.lease("ord_1", customer_id="cust-1")
    assert lease.acquire()
    client.pexpire(lease.key, 5_000)

    now[0] += 0.5  # confirmed half a second ago: no round trip, the term is untouched
    assert lease.keep()
    assert client.pttl(lease.key) <= 5_000

    now[0] += 1.0  # too old to trust: renewed for a full term
    assert lease.keep()
    assert client.pttl(lease.key) > 5_000

    client.delete(lease.key)  # lost (e.g. Redis lost its data): noticed at the next check
    now[0] += 1.0
    assert not lease.keep()
    assert not lease.keep()  # and never trusted again without Redis saying so


def test_keep_never_trusts_longer_than_a_quarter_of_the_term(client: redis.Redis) -> None:
    leases = Leases(client, lease_ms=1_000, recheck_s=5.0, keep_alive=False)
    assert leases.recheck_s == 0.25


def test_the_keep_alive_renews_held_leases_once_old_and_lets_go_of_the_rest(
    client: redis.Redis,
) -> None:
    now = [100.0]
    leases = Leases(client, lease_ms=2_000, monotonic=lambda: now[0], keep_alive=False)
    running, finished, released = (leases.lease(f"ord_{n}", customer_id="cust-1") for n in range(3))
    for lease in (running, finished, released):
        assert lease.acquire()
        client.pexpire(lease.key, 600)
    finished.forget()  # a finished order's lease: left to expire
    released.release()

    assert leases.renew_held() == 0  # all fresh
    now[0] += leases.renew_after_s
    assert leases.renew_held() == 1  # one pipelined round trip for every held lease

    assert client.pttl(running.key) > 1_000
    assert client.pttl(finished.key) <= 600
    assert not client.exists(released.key)
    assert leases.holding() == 1
    assert running.keep()  # just renewed: trusted without a round trip


def test_a_lease_lost_under_the_keep_alive_is_dropped_and_never_trusted_again(
    client: redis.Redis,
) -> None:
    now = [100.0]
    leases = Leases(client, lease_ms=2_000, monotonic=lambda: now[0], keep_alive=False)
    lease = leases.lease("ord_1", customer_id="cust-1")
    assert lease.acquire()
    client.set(lease.key, b"someone else")  # it expired and another runner took it

    now[0] += leases.renew_after_s
    assert leases.renew_held() == 0
    assert leases.holding() == 0
    assert not lease.keep()
    assert client.get(lease.key) == b"someone else"


def test_a_saga_keeps_its_lease_past_its_term_while_it_runs(client: redis.Redis) -> None:
    leases = Leases(client, lease_ms=1_000)  # the real keep-alive thread
    try:
        lease = leases.lease("ord_1", customer_id="cust-1")
        assert lease.acquire()
        client.pexpire(lease.key, 300)  # as if most of the term had gone by in one long step
        wait_until(
            lambda: client.pttl(lease.key) > 500, timeout_s=5, what="the keep-alive's renewal"
        )
        lease.release()
        assert leases.holding() == 0
    finally:
        leases.close()


def test_every_grant_hands_out_a_larger_fencing_token_than_the_last(client: redis.Redis) -> None:
    leases = Leases(client, lease_ms=10_000, keep_alive=False)
    fences = []
    for _ in range(3):
        lease = leases.lease("ord_1", customer_id="cust-1")
        assert lease.fence == 0  # not taken yet
        assert lease.acquire()
        fences.append(lease.fence)
        assert not leases.lease(
            "ord_1", customer_id="cust-1"
        ).acquire()  # a refused grant hands out nothing
        client.delete(lease.key)  # its lease ran out: the next runner takes it
    assert fences == [2, 3, 4]  # above FIRST_FENCE, the order's admission's token
    other = leases.lease("ord_2", customer_id="cust-1")
    assert other.acquire()
    assert other.fence == 2  # one counter per order
    # Both keys hash by the order id alone, so the script runs on one Redis Cluster node.
    assert (lease.key, lease.fence_key) == (
        "order:lease:{cust-1}:ord_1",
        "order:fence:{cust-1}:ord_1",
    )
    assert 6 * 86_400 < client.ttl(lease.fence_key) <= FENCE_TTL_S


def test_a_counter_redis_lost_restarts_above_the_token_the_order_has_seen(
    client: redis.Redis,
) -> None:
    leases = Leases(client, lease_ms=10_000, keep_alive=False)
    lease = leases.lease("ord_1", customer_id="cust-1")
    assert lease.acquire(after=7)  # the row says 7, Redis knows no counter (it lost its data)
    assert lease.fence == 8
    lease.release()
    successor = leases.lease("ord_1", customer_id="cust-1")
    assert successor.acquire(after=3)  # a stale view of the row never lowers the counter
    assert successor.fence == 9
