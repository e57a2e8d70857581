"""Bare channel vs the full resilience pipeline, happy path, sync and aio, 1 and 16 in flight.

Three variants run in interleaved blocks inside one run, against one server process, so machine
noise lands on all of them; each round uses another order (all six in turn):

* bare: the channel's own multicallable, no timeout (the baseline of the headline ratios);
* bare+deadline: the same call with the timeout the pipeline sets (per-attempt 2 s), which
  separates what grpc-core charges for any call with a deadline from what the library costs;
* pipeline: every policy on, a PrometheusListener subscribed.

Reported per scenario: the headline pipeline/bare median-latency and throughput ratios (goal
<= x1.06 and >= x0.95), the library-only ratios pipeline/(bare+deadline), and client CPU per call.

    python -m bench resilience [--quick] [--rounds N] [--block N] [--api sync|aio] [--in-flight N]

For instruction counts, `python -m bench.resilience_bench --calls VARIANT N` makes N sync calls
of one variant (bare, bare+deadline, pipeline, pipeline-no-listener) one at a time, to run under
`valgrind --tool=callgrind` at two values of N (the server runs outside valgrind).
`--library VARIANT N` does the same around an in-process fake multicallable, with no grpc and no
server, so the count is the library's own and repeats exactly (set PYTHONHASHSEED): variants
sync and aio (every policy on, a PrometheusListener), sync-no-listener and aio-no-listener, and
sync-bare and aio-bare (the fake alone, to subtract).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import itertools
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio
from prometheus_client import CollectorRegistry

import resilience

SERVICE = "bench.v1.Bench"
METHOD = f"/{SERVICE}/Echo"
PAYLOAD = b"x" * 64
VARIANTS = ("bare", "bare+deadline", "pipeline")
# Round r runs the variants in ORDERS[r % 6]: each variant is first, middle and last equally
# often, so a drift within a round does not favour one of them.
ORDERS = tuple(itertools.permutations(range(len(VARIANTS))))


def _policy() -> resilience.ClientPolicy:
    """Every policy on, as a service would run it."""
    return resilience.build_policy(
        {
            "methodConfig": [
                {
                    "name": [{}],
                    "timeout": "5s",
                    "retryPolicy": {
                        "maxAttempts": 3,
                        "initialBackoff": "0.01s",
                        "maxBackoff": "0.1s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                        "perAttemptRecvTimeout": "2s",
                    },
                }
            ],
            "retryBudget": {"budgetPercent": 20, "minRetriesPerSecond": 3, "window": "10s"},
            "circuitBreaker": {
                "consecutiveFailures": 5,
                "failureRate": {"threshold": 0.5, "window": "10s", "minimumCalls": 20},
                "resetTimeout": "5s",
            },
            "bulkhead": {"maxConcurrentCalls": 1000},
            "deadlineMargin": "0.02s",
        },
        env={},
    )


def _pipeline(address: str, *, listener: bool = True) -> resilience.Pipeline:
    """The pipeline variant: every policy on, a PrometheusListener subscribed."""
    registry = CollectorRegistry()
    listeners = [resilience.PrometheusListener(registry=registry)] if listener else []
    return resilience.Pipeline(target=address, policy=_policy(), listeners=listeners)


def _attempt_timeout(policy: resilience.ClientPolicy) -> float:
    """The timeout the pipeline puts on each attempt of the happy path."""
    per_attempt = policy.default.retry.per_attempt_timeout
    timeout = policy.default.timeout
    return per_attempt if per_attempt is not None and per_attempt < timeout else timeout


# -- the server: its own process, so it does not compete for the client's GIL ------------


async def _serve() -> None:
    async def echo(request: bytes, context: Any) -> bytes:
        return request

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE, {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


def _start_server() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    port = proc.stdout.readline().strip()
    if not port.isdigit():
        proc.kill()
        raise RuntimeError(f"bench server did not start: {port!r}")
    return proc, f"127.0.0.1:{port}"


# -- measurement ------------------------------------------------------------------------


@dataclass
class Tally:
    """One variant's blocks; ratios pair each block with the other variant's block of the
    same round, so slow drifts of the machine cancel."""

    block_p50: list[float] = field(default_factory=list)
    block_wall: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    cpu: float = 0.0

    def add(self, latencies: list[float], wall: float, cpu: float) -> None:
        self.latencies.extend(latencies)
        self.block_p50.append(statistics.median(latencies))
        self.block_wall.append(wall)
        self.cpu += cpu

    @property
    def median_ms(self) -> float:
        return statistics.median(self.latencies) * 1000

    @property
    def throughput(self) -> float:
        return len(self.latencies) / sum(self.block_wall)

    @property
    def cpu_us(self) -> float:
        return self.cpu / len(self.latencies) * 1e6

    def latency_ratio(self, base: Tally) -> float:
        return statistics.median(b / a for a, b in zip(base.block_p50, self.block_p50, strict=True))

    def throughput_ratio(self, base: Tally) -> float:
        return statistics.median(
            a / b for a, b in zip(base.block_wall, self.block_wall, strict=True)
        )


def _sync_block(
    call: Callable[[bytes], Any], in_flight: int, n: int, pool: futures.ThreadPoolExecutor
) -> list[float]:
    def worker(count: int) -> list[float]:
        out = []
        clock = time.perf_counter
        for _ in range(count):
            t0 = clock()
            call(PAYLOAD)
            out.append(clock() - t0)
        return out

    if in_flight == 1:
        return worker(n)
    per = n // in_flight
    results = list(pool.map(worker, [per] * in_flight))
    return [x for r in results for x in r]


async def _aio_block(call: Callable[[bytes], Any], in_flight: int, n: int) -> list[float]:
    async def worker(count: int) -> list[float]:
        out = []
        clock = time.perf_counter
        for _ in range(count):
            t0 = clock()
            await call(PAYLOAD)
            out.append(clock() - t0)
        return out

    results = await asyncio.gather(*(worker(n // in_flight) for _ in range(in_flight)))
    return [x for r in results for x in r]


def _measure(block: Callable[[], list[float]], tally: Tally) -> None:
    cpu0, wall0 = time.process_time(), time.perf_counter()
    latencies = block()
    tally.add(latencies, time.perf_counter() - wall0, time.process_time() - cpu0)


def _run_sync(address: str, in_flight: int, rounds: int, n: int) -> tuple[Tally, ...]:
    policy = _policy()
    bare_channel = grpc.insecure_channel(address)
    piped_channel = resilience.intercept_channel(grpc.insecure_channel(address), _pipeline(address))
    bare = bare_channel.unary_unary(METHOD)
    calls = (
        bare,
        functools.partial(bare, timeout=_attempt_timeout(policy)),
        piped_channel.unary_unary(METHOD),
    )
    tallies = tuple(Tally() for _ in calls)
    with futures.ThreadPoolExecutor(max_workers=in_flight) as pool:
        for call in calls:  # warm-up, not measured
            _sync_block(call, in_flight, n // 2, pool)
        for r in range(rounds):
            for i in ORDERS[r % len(ORDERS)]:
                call = calls[i]
                _measure(lambda call=call: _sync_block(call, in_flight, n, pool), tallies[i])  # type: ignore[misc]
    bare_channel.close()
    piped_channel.close()
    return tallies


def _run_aio(address: str, in_flight: int, rounds: int, n: int) -> tuple[Tally, ...]:
    async def main() -> tuple[Tally, ...]:
        policy = _policy()
        piped = resilience.intercept_aio_channel(
            grpc.aio.insecure_channel(address), _pipeline(address)
        )
        async with grpc.aio.insecure_channel(address) as bare_channel, piped as piped_channel:
            bare = bare_channel.unary_unary(METHOD)
            calls = (
                bare,
                functools.partial(bare, timeout=_attempt_timeout(policy)),
                piped_channel.unary_unary(METHOD),
            )
            tallies = tuple(Tally() for _ in calls)
            for call in calls:
                await _aio_block(call, in_flight, n // 2)
            for r in range(rounds):
                for i in ORDERS[r % len(ORDERS)]:
                    cpu0, wall0 = time.process_time(), time.perf_counter()
                    latencies = await _aio_block(calls[i], in_flight, n)
                    tallies[i].add(
                        latencies, time.perf_counter() - wall0, time.process_time() - cpu0
                    )
            return tallies

    return asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench resilience", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds per scenario, noisier")
    parser.add_argument("--rounds", type=int, help="rounds per scenario (default 30, quick 12)")
    parser.add_argument("--block", type=int, help="calls per block (default 320, quick 160)")
    parser.add_argument("--api", choices=("sync", "aio"), help="only this api")
    parser.add_argument("--in-flight", type=int, choices=(1, 16), help="only this concurrency")
    args = parser.parse_args(sys.argv[1:])
    rounds = args.rounds or (12 if args.quick else 30)
    block = args.block or (160 if args.quick else 320)

    load_before = os.getloadavg()[0]
    proc, address = _start_server()
    rows = []
    try:
        for api, run in (("sync", _run_sync), ("aio", _run_aio)):
            if args.api not in (None, api):
                continue
            for in_flight in (1, 16):
                if args.in_flight not in (None, in_flight):
                    continue
                rows.append((api, in_flight, run(address, in_flight, rounds, block)))
                print(f"  measured {api} x{in_flight}", file=sys.stderr, flush=True)
    finally:
        proc.terminate()
        proc.wait(10)
    load_after = os.getloadavg()[0]

    print(
        f"resilience pipeline vs bare channel ({rounds} rounds x {len(VARIANTS)} variants"
        f" x {block} calls, {len(PAYLOAD)} B echo, server in its own process,"
        f" {os.cpu_count()} cores, load average {load_before:.2f} before, {load_after:.2f} after)"
    )
    header = (
        f"{'api':<5}{'in flight':>10}{'p50 ms: bare':>13}{'+deadline':>10}{'pipeline':>10}"
        f"{'latency':>9}{'throughput':>11}{'lib latency':>12}{'lib thru':>9}"
        f"{'CPU us: bare':>13}{'+deadline':>10}{'pipeline':>10}"
    )
    print(header)
    print("-" * len(header))
    for api, in_flight, (bare, timed, piped) in rows:
        print(
            f"{api:<5}{in_flight:>10}"
            f"{bare.median_ms:>13.3f}{timed.median_ms:>10.3f}{piped.median_ms:>10.3f}"
            f"{piped.latency_ratio(bare):>8.3f}x{piped.throughput_ratio(bare):>10.3f}x"
            f"{piped.latency_ratio(timed):>11.3f}x{piped.throughput_ratio(timed):>8.3f}x"
            f"{bare.cpu_us:>13.1f}{timed.cpu_us:>10.1f}{piped.cpu_us:>10.1f}"
        )
    print(
        "latency, throughput: median over rounds of pipeline/bare for the same round's blocks"
        " (goal <= 1.06x, >= 0.95x).\nlib latency, lib thru: the same against bare+deadline,"
        " i.e. what the library costs beyond grpc-core's price for a deadline.\n"
        "CPU: the client process's (all its threads), per call."
    )


def _serial_calls(variant: str, n: int) -> None:
    """N sync calls of one variant after 50 warm-up calls, one at a time (see the docstring)."""
    proc, address = _start_server()
    try:
        policy = _policy()
        channel = grpc.insecure_channel(address)
        if variant in ("pipeline", "pipeline-no-listener"):
            listeners: list[resilience.Listener] = []
            if variant == "pipeline":
                listeners.append(resilience.PrometheusListener(registry=CollectorRegistry()))
            pipeline = resilience.Pipeline(target=address, policy=policy, listeners=listeners)
            channel = resilience.intercept_channel(channel, pipeline)
        call = channel.unary_unary(METHOD)
        if variant == "bare+deadline":
            call = functools.partial(call, timeout=_attempt_timeout(policy))
        elif variant not in ("bare", "pipeline", "pipeline-no-listener"):
            raise SystemExit(f"unknown variant {variant!r}")
        for _ in range(50):
            call(PAYLOAD)
        # What exists now is never garbage: a full collection scanning it, landing in one run
        # of a pair and not the other, would swamp the per-call difference.
        gc.freeze()
        for _ in range(n):
            call(PAYLOAD)
        channel.close()
    finally:
        proc.terminate()
        proc.wait(10)


def _fake(
    request: bytes,
    timeout: float | None = None,
    metadata: Any = None,
    credentials: Any = None,
    wait_for_ready: bool | None = None,
    compression: Any = None,
) -> bytes:
    return request


async def _fake_async(
    request: bytes,
    *,
    timeout: float | None = None,
    metadata: Any = None,
    credentials: Any = None,
    wait_for_ready: bool | None = None,
    compression: Any = None,
) -> bytes:
    return request


class _FakeChannel:
    """Just enough of a channel for the pipeline's wrappers: every method is `method`."""

    def __init__(self, method: Callable[..., Any]) -> None:
        self._method = method

    def unary_unary(self, *args: Any, **kwargs: Any) -> Callable[..., Any]:
        return self._method

    unary_stream = stream_unary = stream_stream = unary_unary


def _library_calls(variant: str, n: int) -> None:
    """N calls of one variant around a fake multicallable, after 50 warm-up calls."""
    api, _, kind = variant.partition("-")
    if kind not in ("", "no-listener", "bare") or api not in ("sync", "aio"):
        raise SystemExit(f"unknown variant {variant!r}")
    listener = kind == ""
    if api == "sync":
        call: Callable[..., Any] = _fake
        if kind != "bare":
            pipeline = _pipeline("fake", listener=listener)
            call = resilience.intercept_channel(_FakeChannel(_fake), pipeline).unary_unary(METHOD)
    else:

        async def loop() -> None:
            call = _fake_async
            if kind != "bare":
                pipeline = _pipeline("fake", listener=listener)
                piped = resilience.intercept_aio_channel(_FakeChannel(_fake_async), pipeline)
                call = piped.unary_unary(METHOD)
            for _ in range(50):
                await call(PAYLOAD)
            gc.freeze()
            for _ in range(n):
                await call(PAYLOAD)

        asyncio.run(loop())
        return
    for _ in range(50):
        call(PAYLOAD)
    gc.freeze()  # as in `_serial_calls`
    for _ in range(n):
        call(PAYLOAD)


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        asyncio.run(_serve())
    elif sys.argv[1:2] == ["--calls"] and len(sys.argv) == 4:
        _serial_calls(sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1:2] == ["--library"] and len(sys.argv) == 4:
        _library_calls(sys.argv[2], int(sys.argv[3]))
    else:
        main()
