"""Call-by-call latency of a few variants, run in interleaved blocks: the harness of the Redis
microbenchmarks (``bench lease``, ``bench rate-limit``)."""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections.abc import Callable, Mapping

Counter = Callable[[], int]
WARM_UP_CALLS = 200


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--calls", type=int, default=2_000, help="calls per variant per round")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 500 calls")


def parse(parser: argparse.ArgumentParser) -> argparse.Namespace:
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.calls = 2, 500
    return args


def timed_calls(call: Callable[[], object], calls: int) -> list[float]:
    """Seconds each of ``calls`` calls took."""
    took = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        took.append(time.perf_counter() - start)
    return took


def interleaved(
    variants: Mapping[str, Callable[[], object]],
    *,
    rounds: int,
    calls: int,
    counter: Counter | None = None,
) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Each variant's call latencies over ``rounds`` blocks of ``calls``, after a warm-up (the
    connection, the script cache). Each round runs the variants in another order, so drift hits
    them alike. With ``counter`` (e.g. Redis's busy time so far), also what it grew by during
    each variant's blocks."""
    for call in variants.values():
        timed_calls(call, WARM_UP_CALLS)
    seen: dict[str, list[float]] = {name: [] for name in variants}
    counted = dict.fromkeys(variants, 0)
    orders = list(itertools.permutations(variants))
    for r in range(rounds):
        for name in orders[(r * 7) % len(orders)]:
            before = counter() if counter is not None else 0
            seen[name] += timed_calls(variants[name], calls)
            if counter is not None:
                counted[name] += counter() - before
    return seen, counted


def median_and_p99_us(took: list[float]) -> tuple[float, float]:
    ordered = sorted(took)
    return statistics.median(ordered) * 1e6, ordered[int(len(ordered) * 0.99)] * 1e6
