"""What a fencing token costs a saga lease: the scripts that take a lease and hand out its token,
next to a plain ``SET NX PX`` and a bare round trip, in interleaved blocks against one private
redis-server.

* ping: ``PING``, the bare round trip (the baseline);
* set-nx-px: ``SET key token NX PX``, a lease taken without a token;
* acquire: ``Lease.acquire``, the lease and its fencing token (``ACQUIRE_WITH_FENCE``: ``SET NX
  PX``, ``INCR``, ``PEXPIRE``), as recovery and a duplicate taking an order over do;
* claim: ``Claims.claim``, the request_id's claim with the new order's lease (``ADMIT_AND_CLAIM``,
  the rate limit off), as every CreateOrder does; a new order's first token needs no counter.

Every call takes a new order's lease (and a new request_id), as the service does. Reported:
median and p99 latency per call seen by the client, and Redis's own time per call (the
``INFO commandstats`` time of every command but INFO, over each variant's blocks).

    python -m bench lease [--rounds N] [--calls N]
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable

import redis

from bench import _interleave
from meshkit.redis_client import connect
from meshkit.testing import redis_server
from order_service.claims import Claim, Claims
from order_service.leases import Leases, lease_key

VARIANTS = ("ping", "set-nx-px", "acquire", "claim")
CUSTOMER = "cust-bench"


def _variants(client: redis.Redis) -> dict[str, Callable[[], object]]:
    leases = Leases(client, keep_alive=False)
    claims = Claims(client)
    ids = (f"ord_{n:032x}" for n in itertools.count())

    def set_nx_px() -> None:
        assert client.set(lease_key(CUSTOMER, next(ids)), b"t" * 32, nx=True, px=3_000)

    def acquire() -> None:
        assert leases.lease(next(ids), customer_id=CUSTOMER).acquire()

    def claim() -> None:
        order_id = next(ids)
        lease = leases.lease(order_id, customer_id=CUSTOMER)
        assert claims.claim(order_id, Claim(order_id, "f"), lease) is None

    return {
        "ping": client.ping,
        "set-nx-px": set_nx_px,
        "acquire": acquire,
        "claim": claim,
    }


def _server_usec(client: redis.Redis) -> int:
    """Redis's time in every command so far but INFO (this probe's own)."""
    stats = client.info("commandstats")
    return sum(int(v["usec"]) for k, v in stats.items() if k != "cmdstat_info")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench lease")
    _interleave.add_arguments(parser)
    args = _interleave.parse(parser)
    with redis_server() as server:
        client = connect(server.url)
        seen, server_us = _interleave.interleaved(
            _variants(client),
            rounds=args.rounds,
            calls=args.calls,
            counter=lambda: _server_usec(client),
        )
        client.close()

    base, _ = _interleave.median_and_p99_us(seen["ping"])
    print(f"{'variant':<15} {'median us':>10} {'p99 us':>8} {'x ping':>7} {'redis us':>9}")
    for name in VARIANTS:
        median, p99 = _interleave.median_and_p99_us(seen[name])
        in_redis = server_us[name] / len(seen[name])
        print(f"{name:<15} {median:>10.1f} {p99:>8.1f} {median / base:>7.2f} {in_redis:>9.2f}")


if __name__ == "__main__":
    main()
