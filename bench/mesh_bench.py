"""CreateOrder through Envoy at 1, 16 and 64 in flight, next to a bare gRPC call through the same
Envoy measured in the same run, plus the RSS of every stack process; then CreateOrder on a stack
with mTLS on against one with mTLS off (MESH_MTLS=0), both running, in alternating blocks; then
CreateOrder with tracing off, on at 100% and on at 10% (three stacks, alternating blocks), the
traced ones exporting to a real OTLP receiver each, in processes of their own.

The stack is started exactly as ``make up`` starts it (meshctl, supervisor, real Envoy) but on
free ports in a temp dir with its own redis-server, so a running ``make up`` is never disturbed.
Variants alternate in short blocks (bare, order, bare, order, ...) so machine noise hits both alike.
The load generator is one grpc.aio client in this process; it shares the 2 cores with the stack.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import itertools
import math
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench._load import CallFactory, LoadResult, run_closed_loop
from mesh.common.v1 import money_pb2
from mesh.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from mesh.order.v1 import order_pb2, order_pb2_grpc
from meshctl.testing import running_stack
from meshkit.errors import PUSHBACK_HEADER

IN_FLIGHT = (1, 16, 64)
MTLS_IN_FLIGHT = 16
TRACING_IN_FLIGHT = 16
#: The tracing variants: a name and the stack settings on top of the bench's (the traced ones
#: also get their receiver's OTEL_EXPORTER_OTLP_ENDPOINT).
TRACING_VARIANTS: tuple[tuple[str, Mapping[str, str] | None], ...] = (
    ("off", None),
    ("100% sampled", {}),
    (
        "10% sampled",
        {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"},
    ),
)
SKUS = [f"SKU-{n:04d}" for n in range(1, 21)]
CALL_TIMEOUT_S = 10.0


def _cpu_s(pids: Mapping[str, int]) -> dict[str, float]:
    """CPU seconds (user + system) each of the processes ``pids`` (by name) has used so far."""
    used = {}
    for name, pid in pids.items():
        with contextlib.suppress(OSError):
            # Fields after the command name (which may hold spaces); utime, stime are 14, 15.
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            used[name] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return used


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class _Orders:
    """CreateOrder calls through one edge, each a new order, counting the CONFIRMED ones."""

    def __init__(self, channel: grpc.aio.Channel, customer: str) -> None:
        self._stub = order_pb2_grpc.OrderServiceStub(channel)
        self._customer = customer
        # Every call is a new order: _load's call index restarts with each block, so a
        # request_id built from it would replay earlier orders (cheap idempotent answers).
        self._run_id = uuid.uuid4().hex[:8]
        self._sequence = itertools.count()
        self.confirmed = 0
        self.pushed_back = 0

    async def __call__(self, i: int) -> object:
        request = order_pb2.CreateOrderRequest(
            customer_id=self._customer,
            request_id=f"bench-{self._run_id}-{next(self._sequence)}",
            lines=[money_pb2.Line(sku=SKUS[i % len(SKUS)], quantity=1)],
        )
        while True:
            try:
                order = await self._stub.CreateOrder(request, timeout=CALL_TIMEOUT_S)
                break
            except grpc.aio.AioRpcError as error:
                # Over order's cap of CreateOrders in flight (ORDER_CREATE_MAX_IN_FLIGHT): wait
                # as told and send it again, as a client should; the wait is in its latency.
                pushback = dict(error.trailing_metadata() or ()).get(PUSHBACK_HEADER)
                if error.code() is not grpc.StatusCode.RESOURCE_EXHAUSTED or pushback is None:
                    raise
                self.pushed_back += 1
                await asyncio.sleep(int(pushback) / 1000)
        if order.status == order_pb2.ORDER_STATUS_CONFIRMED:
            self.confirmed += 1
        return order


async def _alternate(
    variants: Sequence[CallFactory],
    in_flight: int,
    block_s: float,
    rounds: int,
    cpu: Sequence[Callable[[], Mapping[str, float]]] = (),
) -> list[LoadResult]:
    """Runs the variants in turn, ``rounds`` blocks each, after an unmeasured warm-up; with
    ``cpu`` (per variant, the CPU seconds of each of its processes), each result's ``cpu_s``
    is what its variant's processes used during its own blocks."""
    for make_call in variants:
        await run_closed_loop(make_call, in_flight=in_flight, duration_s=0.5)
    totals = [LoadResult() for _ in variants]
    clocks: list[Callable[[], Mapping[str, float]]] = list(cpu) or [dict for _ in variants]
    for _ in range(rounds):
        for total, make_call, clock in zip(totals, variants, clocks, strict=True):
            before = clock()
            total.merge(await run_closed_loop(make_call, in_flight=in_flight, duration_s=block_s))
            for name, used in clock().items():
                total.cpu_s[name] = total.cpu_s.get(name, 0.0) + used - before.get(name, used)
    return totals


async def _measure(
    edge: str, in_flight: int, block_s: float, rounds: int
) -> tuple[LoadResult, LoadResult, int, int]:
    async with grpc.aio.insecure_channel(edge) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        health_request = health_pb2.HealthCheckRequest()

        def bare(_: int) -> Awaitable[object]:
            return health.Check(health_request, timeout=CALL_TIMEOUT_S)

        create = _Orders(channel, f"bench-{in_flight}")
        bare_result, orders = await _alternate([bare, create], in_flight, block_s, rounds)
        return bare_result, orders, create.confirmed, create.pushed_back


async def _measure_mtls(
    mtls_edge: str, plain_edge: str, in_flight: int, block_s: float, rounds: int
) -> list[tuple[LoadResult, int]]:
    async with (
        grpc.aio.insecure_channel(mtls_edge) as mtls_channel,
        grpc.aio.insecure_channel(plain_edge) as plain_channel,
    ):
        creates = [
            _Orders(mtls_channel, f"bench-mtls-{in_flight}"),
            _Orders(plain_channel, f"bench-plain-{in_flight}"),
        ]
        results = await _alternate(creates, in_flight, block_s, rounds)
        return [(result, create.confirmed) for result, create in zip(results, creates, strict=True)]


def _row(name: str, in_flight: int, result: LoadResult, extra: str = "") -> str:
    errors = ",".join(f"{k}:{v}" for k, v in sorted(result.errors.items())) or "0"
    return (
        f"| {name:<22} | {in_flight:>9} | {result.throughput:>9.1f} | "
        f"{result.percentile_ms(0.50):>8.2f} | {result.percentile_ms(0.99):>8.2f} | "
        f"{errors:<10} | {extra:<14} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench mesh", description=__doc__)
    parser.add_argument("--block", type=float, default=2.0, help="seconds per A/B block")
    parser.add_argument("--rounds", type=int, default=3, help="A/B blocks per level")
    parser.add_argument("--quick", action="store_true", help="1 round of 1 s blocks")
    parser.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="extra stack setting"
    )
    parser.add_argument(
        "--in-flight", type=int, action="append", help="levels to run (default 1, 16, 64)"
    )
    parser.add_argument(
        "--mtls-rounds", type=int, default=6, help="A/B blocks of mTLS on vs off (0 skips it)"
    )
    parser.add_argument(
        "--tracing-rounds",
        type=int,
        default=6,
        help="blocks of tracing off / 100%% / 10%% (0 skips it)",
    )
    parser.add_argument("--tracing-only", action="store_true", help="only the tracing comparison")
    args = parser.parse_args()
    block_s, rounds = (1.0, 1) if args.quick else (args.block, args.rounds)

    # Enough stock that 64 in flight for the whole run never runs a SKU dry.
    env = {"INVENTORY_SEED_STOCK": "1000000", "ORDER_RATE_PER_S": "0"}
    env.update(item.split("=", 1) for item in args.env)
    if not args.tracing_only:
        _compare_levels(env, args.in_flight or IN_FLIGHT, block_s, rounds)
        if args.mtls_rounds:
            _compare_mtls(env, block_s, 1 if args.quick else args.mtls_rounds)
    if args.tracing_rounds:
        _compare_tracing(env, block_s, 1 if args.quick else args.tracing_rounds)


def _compare_levels(
    env: dict[str, str], levels: Sequence[int], block_s: float, rounds: int
) -> None:
    with (
        tempfile.TemporaryDirectory(prefix="mesh-bench-") as tmp,
        open(os.devnull, "w") as quiet,
        running_stack(Path(tmp), env, out=quiet) as stack,
    ):
        print(
            f"CreateOrder (1 line) vs bare Health/Check through the same Envoy; "
            f"{rounds} alternating blocks of {block_s:.1f} s per variant and level"
        )
        print(f"stack settings: {' '.join(f'{k}={v}' for k, v in sorted(env.items()))}\n")
        print(
            "| call                   | in flight | calls/s   | p50 ms   | p99 ms   | "
            "errors     | vs bare        |"
        )
        print(
            "|------------------------|-----------|-----------|----------|----------|"
            "------------|----------------|"
        )
        for in_flight in levels:
            bare, orders, confirmed, pushed_back = asyncio.run(
                _measure(stack.config.edge_target, in_flight, block_s, rounds)
            )
            ratio = (
                f"x{orders.percentile_ms(0.5) / bare.percentile_ms(0.5):.1f} p50"
                if bare.ok and orders.ok
                else ""
            )
            print(_row("bare Health/Check", in_flight, bare))
            waits = f", {pushed_back} waits" if pushed_back else ""
            print(_row(f"CreateOrder ({confirmed} ok{waits})", in_flight, orders, ratio))
        pids = stack.supervisor.pids()
        print("\nRSS after the run (MiB):")
        print("| process        | pid     | RSS MiB |")
        print("|----------------|---------|---------|")
        total = 0
        for name, pid in sorted(pids.items()):
            with contextlib.suppress(OSError):
                rss = _rss_kib(pid)
                total += rss
                print(f"| {name:<14} | {pid:>7} | {rss / 1024:>7.1f} |")
        print(f"| {'total':<14} | {'':>7} | {total / 1024:>7.1f} |")
        _check_stock(stack.config.edge_target)


def _compare_mtls(env: dict[str, str], block_s: float, rounds: int) -> None:
    """CreateOrder with mTLS on every hop behind the edge against the same stack in plaintext;
    both stacks run throughout, so the idle one costs both variants alike."""
    with (
        tempfile.TemporaryDirectory(prefix="mesh-bench-mtls-") as tmp,
        open(os.devnull, "w") as quiet,
        running_stack(Path(tmp) / "mtls", env, out=quiet) as mtls,
        running_stack(Path(tmp) / "plain", env, mtls=False, out=quiet) as plain,
    ):
        print(
            f"\nCreateOrder, mTLS on vs off (MESH_MTLS=0), {MTLS_IN_FLIGHT} in flight; "
            f"{rounds} alternating blocks of {block_s:.1f} s per variant, both stacks running\n"
        )
        print(
            "| call                   | in flight | calls/s   | p50 ms   | p99 ms   | "
            "errors     | vs mTLS off    |"
        )
        print(
            "|------------------------|-----------|-----------|----------|----------|"
            "------------|----------------|"
        )
        (on, on_ok), (off, off_ok) = asyncio.run(
            _measure_mtls(
                mtls.config.edge_target, plain.config.edge_target, MTLS_IN_FLIGHT, block_s, rounds
            )
        )
        ratio = f"x{on.throughput / off.throughput:.3f} calls/s" if off.throughput else ""
        print(_row(f"mTLS on ({on_ok} ok)", MTLS_IN_FLIGHT, on, ratio))
        print(_row(f"mTLS off ({off_ok} ok)", MTLS_IN_FLIGHT, off))


@contextlib.contextmanager
def _receiver() -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """An OTLP receiver process (bench._receiver): its endpoint, and the process, whose last
    line is the number of spans it received once its stdin is closed."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bench._receiver"],
        cwd=Path(__file__).resolve().parent.parent,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        yield process.stdout.readline().strip(), process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _spans_received(process: subprocess.Popen[str]) -> int:
    out, _ = process.communicate(timeout=60)
    return int(out.split()[-1])


async def _measure_tracing(
    edges: Sequence[str],
    cpu: Sequence[Callable[[], Mapping[str, float]]],
    in_flight: int,
    block_s: float,
    rounds: int,
) -> list[tuple[LoadResult, int]]:
    async with contextlib.AsyncExitStack() as channels:
        creates = [
            _Orders(
                await channels.enter_async_context(grpc.aio.insecure_channel(edge)),
                f"bench-tracing-{n}",
            )
            for n, edge in enumerate(edges)
        ]
        results = await _alternate(creates, in_flight, block_s, rounds, cpu)
        return [(result, create.confirmed) for result, create in zip(results, creates, strict=True)]


def _compare_tracing(env: dict[str, str], block_s: float, rounds: int) -> None:
    """CreateOrder with tracing off, on at 100% and on at 10% (parent-based trace-id ratio:
    the edge samples a tenth of the new traces and every service follows its flag); the
    three stacks run throughout, so the idle ones cost every variant alike."""
    load_before = os.getloadavg()
    with contextlib.ExitStack() as outer:
        tmp = Path(outer.enter_context(tempfile.TemporaryDirectory(prefix="mesh-bench-otel-")))
        quiet = outer.enter_context(open(os.devnull, "w"))
        # The receivers outlive the stacks, which flush their queued spans as they stop.
        receivers = {
            n: outer.enter_context(_receiver())
            for n, (_, extra) in enumerate(TRACING_VARIANTS)
            if extra is not None
        }
        with contextlib.ExitStack() as running:
            stacks = [
                running.enter_context(
                    running_stack(
                        tmp / str(n),
                        {**env}
                        if extra is None
                        else {**env, **extra, "OTEL_EXPORTER_OTLP_ENDPOINT": receivers[n][0]},
                        out=quiet,
                    )
                )
                for n, (_, extra) in enumerate(TRACING_VARIANTS)
            ]
            # A variant's CPU: its stack's processes and its receiver, in its own blocks.
            pids = [
                {
                    **stack.supervisor.pids(),
                    **({"receiver": receivers[n][1].pid} if n in receivers else {}),
                }
                for n, stack in enumerate(stacks)
            ]
            measured = asyncio.run(
                _measure_tracing(
                    [stack.config.edge_target for stack in stacks],
                    [functools.partial(_cpu_s, variant) for variant in pids],
                    TRACING_IN_FLIGHT,
                    block_s,
                    rounds,
                )
            )
            order_rss = [_rss_kib(stack.supervisor.pids()["order"]) / 1024 for stack in stacks]
            load_after = os.getloadavg()
        spans = {n: _spans_received(process) for n, (_, process) in receivers.items()}
    print(
        f"\nCreateOrder, tracing off vs on, {TRACING_IN_FLIGHT} in flight; {rounds} "
        f"alternating blocks of {block_s:.1f} s per variant, all three stacks running; spans "
        "go to bench._receiver's OTLP/gRPC receiver (grpcio; decodes each request and counts "
        "its spans, keeps none), one process per traced stack"
    )
    print(f"stack settings: {' '.join(f'{k}={v}' for k, v in sorted(env.items()))}\n")
    print(
        "| variant                | in flight | calls/s   | p50 ms   | p99 ms   | "
        "errors     | calls/s vs off | p99 vs off | CPU ms/order | order RSS MiB |"
    )
    print(
        "|------------------------|-----------|-----------|----------|----------|"
        "------------|----------------|------------|--------------|---------------|"
    )
    off = measured[0][0]
    for (name, _), (result, ok), rss in zip(TRACING_VARIANTS, measured, order_rss, strict=True):
        throughput = f"x{result.throughput / off.throughput:.3f}"
        p99 = f"x{result.percentile_ms(0.99) / off.percentile_ms(0.99):.3f}"
        row = _row(f"{name} ({ok} ok)", TRACING_IN_FLIGHT, result, throughput)
        cpu_ms = 1000 * sum(result.cpu_s.values()) / result.ok if result.ok else math.nan
        print(f"{row} {p99:<10} | {cpu_ms:>12.2f} | {rss:>13.1f} |")
    print(
        "\nCPU ms/order: user + system time of the variant's supervised processes and its "
        "receiver during its own blocks, per order answered; by process:"
    )
    for (name, _), (result, _) in zip(TRACING_VARIANTS, measured, strict=True):
        used = sorted(result.cpu_s.items(), key=lambda item: -item[1])
        shown = ", ".join(f"{process} {1000 * s / result.ok:.2f}" for process, s in used if s)
        print(f"  {name}: {shown}" if result.ok else f"  {name}: no order answered")
    for n, count in spans.items():
        ok = measured[n][1]
        per_order = count / ok if ok else 0.0
        print(f"{TRACING_VARIANTS[n][0]}: {count} spans received, {per_order:.1f} per order")
    print(
        f"load average: {load_before[0]:.2f} before, "
        f"{' '.join(f'{x:.2f}' for x in load_after)} after (1, 5, 15 min)"
    )


def _check_stock(edge: str) -> None:
    """A sanity line: stock stayed non-negative under load."""
    with grpc.insecure_channel(edge) as channel:
        stub = inventory_pb2_grpc.InventoryServiceStub(channel)
        page = stub.ListItems(inventory_pb2.ListItemsRequest(page_size=100), timeout=5)
        low = min(item.available for item in page.items)
        print(f"\nlowest stock after the run: {low} (never below 0)")


if __name__ == "__main__":
    main()
