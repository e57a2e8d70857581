"""What a CreateOrder asks of Redis, across every service, and what the order events and the
rate limit cost CreateOrder's throughput.

1. Commands per CreateOrder: ``--orders`` sequential CreateOrders (one line, each of a new
   customer, as most orders are: the limit applied to a customer with nothing in flight), then
   as many again, ``BURST`` in a row per customer (all but the first mid-burst, where the limit
   costs one SET more; none refused), through the edge of a stack started as ``make up``
   starts it, with its own redis-server; Redis's ``MONITOR`` splits what clients sent (a
   script call is one command) from what scripts ran inside, and ``INFO commandstats`` (reset
   before) gives the total. PING, INFO, CONFIG and HELLO (health checks, this probe) are left
   out, and the stream commands (the outbox relay's XADD) are counted apart. Two stacks: every
   default (rate limit and events on), and ``ORDER_RATE_PER_S=0 ORDER_EVENTS_MAXLEN=0``.
2. Throughput: CreateOrder at 16 in flight on a stack with the rate limit (at a rate no run
   reaches, so it is applied and never refuses) and the events on, against one with both off,
   both running, in alternating blocks (bench.mesh_bench's shape).

    python -m bench redis-commands [--orders N] [--rounds N] [--block S] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import redis

from bench.mesh_bench import _alternate, _cpu_s, _Orders, _row
from mesh.common.v1 import money_pb2
from mesh.order.v1 import order_pb2, order_pb2_grpc
from meshctl.testing import running_stack
from meshkit import order_events

#: Not CreateOrder's: health checks, the Prometheus Redis exporter's scrapes, this probe's own.
IGNORED = frozenset(
    {"PING", "INFO", "CONFIG", "HELLO", "CLIENT", "MONITOR", "SELECT", "LATENCY", "SLOWLOG"}
    | {"DBSIZE", "MEMORY", "COMMAND", "CLUSTER"}
)
#: The order events stream's commands (the relay's, the notification consumer's), counted apart;
#: MULTI and EXEC are the relay's, around each batch of XADDs (nothing else here sends them).
STREAM_COMMANDS = frozenset(
    {"XADD", "XTRIM", "XREADGROUP", "XACK", "XAUTOCLAIM", "XCLAIM", "XINFO", "XGROUP", "XLEN"}
    | {"MULTI", "EXEC"}
)
THROUGHPUT_IN_FLIGHT = 16
#: Orders in a row per customer in the mid-burst pass: within the default burst of 20.
BURST = 10
#: Enough stock for every run; big enough rates that the limit is applied but never refuses.
BASE_ENV = {"INVENTORY_SEED_STOCK": "1000000"}
ON_ENV = {**BASE_ENV, "ORDER_RATE_PER_S": "1000000", "ORDER_RATE_BURST": "1000000"}
OFF_ENV = {**BASE_ENV, "ORDER_RATE_PER_S": "0", "ORDER_EVENTS_MAXLEN": "0"}


@dataclass(slots=True)
class Counts:
    """Commands Redis saw during the measured orders, by name."""

    sent: collections.Counter[str] = field(default_factory=collections.Counter)
    in_scripts: collections.Counter[str] = field(default_factory=collections.Counter)
    stats: dict[str, int] = field(default_factory=dict)


def _split(counter: Mapping[str, int]) -> tuple[dict[str, int], dict[str, int]]:
    """CreateOrder's commands, and the stream's apart; the ignored ones left out."""
    kept = {k: v for k, v in counter.items() if k.split("|", 1)[0] not in IGNORED}
    # A subcommand counts as its command: XINFO|GROUPS (the notification consumer's) is XINFO.
    stream = {k: v for k, v in kept.items() if k.split("|", 1)[0] in STREAM_COMMANDS}
    return {k: v for k, v in kept.items() if k not in stream}, stream


@contextmanager
def _monitored(url: str) -> Iterator[Counts]:
    """Counts every command Redis runs until the block ends (MONITOR, in a thread)."""
    counts = Counts()
    stop = threading.Event()
    started = threading.Event()

    def watch() -> None:
        with redis.Redis.from_url(url).monitor() as monitor:
            started.set()
            for command in monitor.listen():
                if stop.is_set():
                    return
                name = str(command["command"]).split(" ", 1)[0].strip('"').upper()
                inside = command.get("client_type") == "lua"
                (counts.in_scripts if inside else counts.sent)[name] += 1

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    started.wait(5)
    time.sleep(0.2)  # MONITOR is on once its reply came back; give it a moment more
    client = redis.Redis.from_url(url)
    client.config_resetstat()
    try:
        yield counts
    finally:
        stats = client.info("commandstats")
        counts.stats = {
            key.removeprefix("cmdstat_").upper(): int(value["calls"])
            for key, value in stats.items()
        }
        stop.set()
        client.ping()  # wakes the monitor so it sees the stop
        thread.join(5)
        client.close()


def _per_order(counter: Mapping[str, int], orders: int) -> str:
    total = sum(counter.values()) / orders
    parts = ", ".join(f"{k} {v / orders:.2f}" for k, v in sorted(counter.items()))
    return f"{total:.2f} ({parts or 'none'})"


def _count(env: Mapping[str, str], orders: int) -> None:
    with (
        tempfile.TemporaryDirectory(prefix="mesh-bench-redis-") as tmp,
        open(os.devnull, "w") as quiet,
        running_stack(Path(tmp), {**BASE_ENV, **env}, out=quiet) as stack,
        grpc.insecure_channel(stack.config.edge_target) as edge,
    ):
        stub = order_pb2_grpc.OrderServiceStub(edge)
        run = uuid.uuid4().hex[:8]

        def place(n: int, customer: int) -> order_pb2.Order:
            order: order_pb2.Order = stub.CreateOrder(
                order_pb2.CreateOrderRequest(
                    customer_id=f"bench-{run}-{customer}",
                    request_id=f"bench-{run}-{n}",
                    lines=[money_pb2.Line(sku=f"SKU-{n % 20 + 1:04d}", quantity=1)],
                ),
                timeout=10,
            )
            return order

        for n in range(5):  # loads the scripts, warms the caches and connections
            place(-1 - n, -1 - n)
        time.sleep(0.5)
        url = stack.config.redis_url
        settings = " ".join(f"{k}={v}" for k, v in sorted({**BASE_ENV, **env}.items()))
        passes = (
            ("each of a new customer", 0, 1),
            (f"{BURST} in a row per customer", orders, BURST),
        )
        for label, first, per_customer in passes:
            with _monitored(url) as counts:
                statuses = collections.Counter(
                    place(n, first + n // per_customer).status for n in range(first, first + orders)
                )
                time.sleep(0.3)  # the relay's last XADDs
            confirmed = statuses[order_pb2.ORDER_STATUS_CONFIRMED]
            print(f"settings: {settings}; {orders} CreateOrders, {label}, {confirmed} CONFIRMED")
            _report(counts, orders)
            length = redis.Redis.from_url(url).xlen(order_events.STREAM)
            print(f"  {order_events.STREAM} holds {length} entries\n")


def _report(counts: Counts, orders: int) -> None:
    sent, sent_stream = _split(counts.sent)
    inside, _ = _split(counts.in_scripts)
    stats, stats_stream = _split(counts.stats)
    print(f"  sent by clients per CreateOrder:    {_per_order(sent, orders)}")
    print(f"  run inside those scripts:           {_per_order(inside, orders)}")
    print(f"  INFO commandstats (all of them):    {_per_order(stats, orders)}")
    print(f"  stream commands, apart:             {_per_order(sent_stream, orders)}")
    if stats_stream != sent_stream:
        print(f"  (commandstats' stream commands:     {_per_order(stats_stream, orders)})")


async def _throughput(
    edges: tuple[str, str],
    pids: tuple[Mapping[str, int], Mapping[str, int]],
    block_s: float,
    rounds: int,
) -> None:
    async with (
        grpc.aio.insecure_channel(edges[0]) as on_channel,
        grpc.aio.insecure_channel(edges[1]) as off_channel,
    ):
        creates = [_Orders(on_channel, "bench-on"), _Orders(off_channel, "bench-off")]
        clocks = [functools.partial(_cpu_s, variant) for variant in pids]
        on, off = await _alternate(creates, THROUGHPUT_IN_FLIGHT, block_s, rounds, clocks)
    ratio = f"x{on.throughput / off.throughput:.3f} calls/s" if off.throughput else ""
    print(_row(f"on ({creates[0].confirmed} ok)", THROUGHPUT_IN_FLIGHT, on, ratio))
    print(_row(f"off ({creates[1].confirmed} ok)", THROUGHPUT_IN_FLIGHT, off))
    print("\nCPU ms per CreateOrder, by process (during each variant's own blocks):")
    names = sorted(set(on.cpu_s) | set(off.cpu_s))
    print("| process        | on      | off     |")
    print("|----------------|---------|---------|")
    for name in [*names, "total"]:
        cells = []
        for result in (on, off):
            used = sum(result.cpu_s.values()) if name == "total" else result.cpu_s.get(name, 0.0)
            cells.append(f"{1000 * used / result.ok:>7.2f}" if result.ok else "      -")
        print(f"| {name:<14} | {cells[0]} | {cells[1]} |")


def _compare_throughput(block_s: float, rounds: int) -> None:
    with (
        tempfile.TemporaryDirectory(prefix="mesh-bench-onoff-") as tmp,
        open(os.devnull, "w") as quiet,
        running_stack(Path(tmp) / "on", ON_ENV, out=quiet) as on,
        running_stack(Path(tmp) / "off", OFF_ENV, out=quiet) as off,
    ):
        print(
            f"CreateOrder, rate limit and order events on vs off, {THROUGHPUT_IN_FLIGHT} in"
            f" flight; {rounds} alternating blocks of {block_s:.1f} s per variant, both stacks"
            " running"
        )
        print(f"on:  {' '.join(f'{k}={v}' for k, v in sorted(ON_ENV.items()))}")
        print(f"off: {' '.join(f'{k}={v}' for k, v in sorted(OFF_ENV.items()))}\n")
        print(
            "| call                   | in flight | calls/s   | p50 ms   | p99 ms   | "
            "errors     | vs off         |"
        )
        print(
            "|------------------------|-----------|-----------|----------|----------|"
            "------------|----------------|"
        )
        asyncio.run(
            _throughput(
                (on.config.edge_target, off.config.edge_target),
                (on.supervisor.pids(), off.supervisor.pids()),
                block_s,
                rounds,
            )
        )
        length = redis.Redis.from_url(on.config.redis_url).xlen(order_events.STREAM)
        print(f"\nthe 'on' stack's {order_events.STREAM} holds {length} entries")


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench redis-commands", description=__doc__)
    parser.add_argument("--orders", type=int, default=60, help="sequential CreateOrders counted")
    parser.add_argument("--block", type=float, default=2.0, help="seconds per on/off block")
    parser.add_argument("--rounds", type=int, default=6, help="on/off blocks per variant")
    parser.add_argument("--quick", action="store_true", help="20 orders, 1 round of 1 s blocks")
    args = parser.parse_args()
    orders, block_s, rounds = (20, 1.0, 1) if args.quick else (args.orders, args.block, args.rounds)
    print("Redis commands per CreateOrder (a script call counts once; what it runs is below)\n")
    _count({}, orders)
    _count({"ORDER_RATE_PER_S": "0", "ORDER_EVENTS_MAXLEN": "0"}, orders)
    if rounds:
        _compare_throughput(block_s, rounds)


if __name__ == "__main__":
    main()
