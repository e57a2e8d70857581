"""What the per-customer rate limit costs a CreateOrder: the admission script (request_id claim,
lease) with the limit and without it, next to a plain Redis round trip, in
interleaved blocks against one private redis-server.

* ping: ``PING``, the bare round trip (the baseline);
* get: ``GET`` of a customer's key, a one-key read;
* claim: ``Claims.claim`` of a new request_id with the limit off (the script skips it);
* admit: the same claim with the limit on, letting the order in (one ``SET NX PX`` more in
  the script: each call is a new, idle customer's);
* refuse: the claim of a customer over the limit (the script takes the claim and drops it
  again, and leaves the customer's key as it was), and the ``ResourceExhausted`` it raises.

Reported: median and p99 latency per call seen by the client, and Redis's own time per call
(``INFO commandstats``, usec_per_call) for the script and for GET.

    python -m bench rate-limit [--rounds N] [--calls N]
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable

import redis

from bench import _interleave
from meshkit.errors import ResourceExhausted
from meshkit.redis_client import connect
from meshkit.testing import redis_server
from order_service.claims import Claim, Claims
from order_service.leases import Leases
from order_service.ratelimit import CustomerRateLimit, RateLimitOptions

VARIANTS = ("ping", "get", "claim", "admit", "refuse")


def _variants(client: redis.Redis) -> dict[str, Callable[[], object]]:
    claims, leases = Claims(client), Leases(client, keep_alive=False)
    # A rate no loop reaches: every admit is let in, and each call is a new customer's anyway.
    open_limit = CustomerRateLimit(RateLimitOptions(per_s=1_000_000, burst=1_000_000))
    closed = CustomerRateLimit(RateLimitOptions(per_s=0.001, burst=1))
    ids = (f"{n:032x}" for n in itertools.count())

    def admit(customer_id: str, limit: CustomerRateLimit | None) -> None:
        n = next(ids)
        lease = leases.lease(f"ord_{n}", customer_id=customer_id)
        assert claims.claim(f"req-{n}", Claim(f"ord_{n}", "f"), lease, limit=limit) is None

    admit("cust-over", closed)

    def refuse() -> None:
        try:
            admit("cust-over", closed)
        except ResourceExhausted:
            return
        raise AssertionError("an order over the limit was let in")

    return {
        "ping": client.ping,
        "get": lambda: client.get("order:ratelimit:{cust-0}"),
        "claim": lambda: admit(f"cust-{next(ids)}", None),
        "admit": lambda: admit(f"cust-{next(ids)}", open_limit),
        "refuse": refuse,
    }


def _server_usec(client: redis.Redis) -> dict[str, float]:
    stats = client.info("commandstats")
    return {
        name: float(stats[f"cmdstat_{name}"]["usec_per_call"])
        for name in ("evalsha", "get", "ping")
        if f"cmdstat_{name}" in stats
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench rate-limit")
    _interleave.add_arguments(parser)
    args = _interleave.parse(parser)
    with redis_server() as server:
        client = connect(server.url)
        variants = _variants(client)
        client.config_resetstat()
        seen, _ = _interleave.interleaved(variants, rounds=args.rounds, calls=args.calls)
        server_usec = _server_usec(client)
        client.close()

    base, _ = _interleave.median_and_p99_us(seen["ping"])
    print(f"{'variant':<8} {'median us':>10} {'p99 us':>8} {'x ping':>7}")
    for name in VARIANTS:
        median, p99 = _interleave.median_and_p99_us(seen[name])
        print(f"{name:<8} {median:>10.1f} {p99:>8.1f} {median / base:>7.2f}")
    print("redis-server's own time per call (usec_per_call):")
    for name, usec in server_usec.items():
        print(f"  {name:<8} {usec:.2f}")


if __name__ == "__main__":
    main()
