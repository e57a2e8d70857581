"""The fault scenarios on real stacks: the order service's resilience policy against a policy
that only sets the per-call deadline, measured in the same run.

Per scenario, two stacks run side by side, started as ``make up`` starts them (on free ports,
each with its own redis-server): one with services/order/order_service/resilience.yaml, one
with RESILIENCE_POLICY_FILE pointing at PLAIN_DEADLINE_POLICY (one attempt per call, no retry
budget, breaker or bulkhead). Faults are the stacks' start-up settings (PAYMENT_FAULT_RATE and
PAYMENT_FAULT_CODE on both payment deployments, PAYMENT_LATENCY_MS), or a kill -9 of payment v1
once per block, which supervisord restarts. The two stacks take turns in short blocks, so
machine noise hits both policies alike; in each block one grpc.aio client keeps CreateOrder
calls with fresh request_ids in flight through the edge while a reader calls GetOrder and
Health/Check every 50 ms (1 s deadline), as a user would while orders are slow.

Attempts per Charge: the Charge calls the payment servers finished
(``grpc_server_handled_total``, both deployments; across a restart, the killed process is read
just before the kill, so the attempts it was serving then are not counted) over the order
service's logical Charge calls (``resilience_client_calls_total{target="payment"}``, refused ones
included). Orders answered PENDING are followed until recovery ends them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import os
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench._fault_stacks import (
    BASE_ENV,
    PLAIN_DEADLINE_POLICY,
    ChargeCounts,
    create_order,
    kill_payment_v1,
    policy_stacks,
    status_name,
)
from bench._load import LoadResult, run_closed_loop
from mesh.order.v1 import order_pb2, order_pb2_grpc
from meshctl.stack import Stack

READ_TIMEOUT_S = 1.0
READ_PAUSE_S = 0.05
WARM_UP_S = 1.0
#: A kill block: load for this long, kill -9 payment v1, load until the block ends.
KILL_AT_S = 1.5
#: How much of a FAILED order's failure_reason the notes show: its kind, not its numbers.
REASON_CHARS = 100
#: How long orders answered PENDING are followed until recovery ends them.
SETTLE_GIVE_UP_S = 60.0


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    env: Mapping[str, str]
    in_flight: int = 8
    #: Kill -9 payment v1 once per block.
    kill: bool = False


SCENARIOS = (
    Scenario("steady", {}),
    Scenario(
        "payment 10% UNAVAILABLE",
        {"PAYMENT_FAULT_RATE": "0.1", "PAYMENT_FAULT_CODE": "UNAVAILABLE"},
    ),
    Scenario(
        "payment 50% UNAVAILABLE",
        {"PAYMENT_FAULT_RATE": "0.5", "PAYMENT_FAULT_CODE": "UNAVAILABLE"},
    ),
    Scenario("payment down", {"PAYMENT_FAULT_RATE": "1", "PAYMENT_FAULT_CODE": "UNAVAILABLE"}),
    Scenario("payment +1.5 s", {"PAYMENT_LATENCY_MS": "1500"}, in_flight=64),
    Scenario("kill -9 payment v1", {}, kill=True),
)


def _reason(failure_reason: str) -> str:
    """A failure reason cut to its first words, which tell one kind of failure from another."""
    return failure_reason[:REASON_CHARS] + ("..." if len(failure_reason) > REASON_CHARS else "")


@dataclass(slots=True)
class _Reads:
    get_order: LoadResult = field(default_factory=LoadResult)
    health: Counter[str] = field(default_factory=Counter)


class _Target:
    """One policy's stack under load: its orders, its reads, its Charge attempts."""

    def __init__(self, policy: str, stack: Stack, channel: grpc.aio.Channel) -> None:
        self.policy = policy
        self.stack = stack
        self._orders = order_pb2_grpc.OrderServiceStub(channel)
        self._health = health_pb2_grpc.HealthStub(channel)
        self._run_id = uuid.uuid4().hex[:8]
        self._sequence = itertools.count()
        self.statuses: Counter[str] = Counter()
        self.failure_reasons: Counter[str] = Counter()
        self.load = LoadResult()
        self.reads = _Reads()
        self.restarts_s: list[float] = []
        self.known_order_id = ""
        #: Orders answered PENDING, until settle() sees them end, and how they ended.
        self.pending: set[str] = set()
        self.settled: Counter[str] = Counter()
        self.settled_s = 0.0
        self.counts: ChargeCounts | None = None

    async def create(self, i: int) -> object:
        """One new order, its pushback honoured (bench._fault_stacks.create_order)."""
        order = await create_order(self._orders, f"faults-{self._run_id}-{next(self._sequence)}", i)
        self.statuses[status_name(order)] += 1
        if order.status == order_pb2.ORDER_STATUS_FAILED:
            self.failure_reasons[_reason(order.failure_reason)] += 1
        if order.status == order_pb2.ORDER_STATUS_PENDING:
            self.pending.add(order.order_id)
        return order

    async def read_until(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                await self._orders.GetOrder(
                    order_pb2.GetOrderRequest(order_id=self.known_order_id),
                    timeout=READ_TIMEOUT_S,
                )
                self.reads.get_order.latencies_s.append(time.perf_counter() - started)
            except grpc.aio.AioRpcError as error:
                errors = self.reads.get_order.errors
                errors[error.code().name] = errors.get(error.code().name, 0) + 1
            try:
                answer = await self._health.Check(
                    health_pb2.HealthCheckRequest(), timeout=READ_TIMEOUT_S
                )
                status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
            except grpc.aio.AioRpcError as error:
                status = error.code().name
            self.reads.health[status] += 1
            await asyncio.sleep(READ_PAUSE_S)

    async def kill_payment_v1(self, after_s: float) -> None:
        """kill -9 of payment v1 after ``after_s``; returns once it is back, noting how long
        that took."""
        await asyncio.sleep(after_s)
        self.restarts_s.append(await kill_payment_v1(self.stack, self.counts))

    async def settle(self, since: float) -> None:
        """Follows the orders answered PENDING until recovery has ended each, or gives up;
        notes how long after ``since`` (a monotonic time) the last one ended."""
        while self.pending and time.monotonic() - since < SETTLE_GIVE_UP_S:
            for order_id in sorted(self.pending):
                order = await self._orders.GetOrder(
                    order_pb2.GetOrderRequest(order_id=order_id), timeout=READ_TIMEOUT_S
                )
                if order.status != order_pb2.ORDER_STATUS_PENDING:
                    self.pending.discard(order_id)
                    self.settled[status_name(order)] += 1
            await asyncio.sleep(0.2)
        self.settled_s = time.monotonic() - since


async def _block(target: _Target, scenario: Scenario, duration_s: float) -> LoadResult:
    stop = asyncio.Event()
    reader = asyncio.create_task(target.read_until(stop))
    killer = asyncio.create_task(target.kill_payment_v1(KILL_AT_S)) if scenario.kill else None
    try:
        return await run_closed_loop(
            target.create, in_flight=scenario.in_flight, duration_s=duration_s
        )
    finally:
        stop.set()
        await reader
        if killer is not None:
            await killer  # the next block starts with payment v1 serving


async def _measure(
    scenario: Scenario, stacks: Mapping[str, Stack], block_s: float, rounds: int
) -> list[_Target]:
    async with contextlib.AsyncExitStack() as channels:
        targets = [
            _Target(
                policy,
                stack,
                await channels.enter_async_context(
                    grpc.aio.insecure_channel(stack.config.edge_target)
                ),
            )
            for policy, stack in stacks.items()
        ]
        for target in targets:
            first = await target.create(0)
            assert isinstance(first, order_pb2.Order)
            target.known_order_id = first.order_id
            await _block(target, dataclasses.replace(scenario, kill=False), WARM_UP_S)
            target.statuses.clear()
            target.failure_reasons.clear()
            target.pending.clear()
            target.reads = _Reads()
            target.counts = await asyncio.to_thread(ChargeCounts, target.stack)
        for _ in range(rounds):
            for target in targets:
                target.load.merge(await _block(target, scenario, block_s))
        measured = time.monotonic()
        for target in targets:
            await target.settle(since=measured)
        return targets


#: The table's columns and their widths; a row's cells come from _cells, in this order.
COLUMNS = (
    ("scenario", 23),
    ("policy", 15),
    ("in flight", 9),
    ("orders", 6),
    ("CONFIRMED", 9),
    ("FAILED", 6),
    ("other outcomes", 24),
    ("attempts per Charge", 19),
    ("p50 ms", 7),
    ("p99 ms", 7),
    ("GetOrder p99 ms", 15),
    ("GetOrder ok", 11),
    ("health ok", 9),
)


def _share(count: int, total: int) -> str:
    return f"{100 * count / total:.1f}%" if total else "-"


def _cells(scenario: Scenario, target: _Target) -> list[str]:
    load, statuses, reads = target.load, target.statuses, target.reads
    other = Counter({k: v for k, v in statuses.items() if k not in ("CONFIRMED", "FAILED")})
    other.update(load.errors)
    reached, calls = target.counts.per_call() if target.counts else (0.0, 0.0)
    get_order = reads.get_order
    return [
        scenario.name,
        target.policy,
        str(scenario.in_flight),
        str(load.ok),
        _share(statuses["CONFIRMED"], load.ok),
        _share(statuses["FAILED"], load.ok),
        ", ".join(f"{k} {v}" for k, v in sorted(other.items())) or "0",
        f"{reached / calls:.2f} ({reached:.0f}/{calls:.0f})" if calls else "-",
        f"{load.percentile_ms(0.5):.1f}",
        f"{load.percentile_ms(0.99):.1f}",
        f"{get_order.percentile_ms(0.99):.1f}",
        f"{get_order.ok}/{get_order.ok + get_order.error_count}",
        f"{reads.health['SERVING']}/{sum(reads.health.values())}",
    ]


def _table_row(cells: list[str]) -> str:
    return "| " + " | ".join(f"{c:<{w}}" for c, (_, w) in zip(cells, COLUMNS, strict=True)) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench faults", description=__doc__)
    parser.add_argument("--block", type=float, default=3.0, help="seconds per block")
    parser.add_argument("--rounds", type=int, default=3, help="blocks per policy and scenario")
    parser.add_argument("--kill-block", type=float, default=5.0, help="seconds per kill block")
    parser.add_argument("--kill-rounds", type=int, default=3, help="kills per policy")
    parser.add_argument("--quick", action="store_true", help="1 block per policy, 2 s (4 s kill)")
    parser.add_argument(
        "--scenario", action="append", choices=[s.name for s in SCENARIOS], help="only these"
    )
    parser.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="extra stack setting"
    )
    args = parser.parse_args()
    if args.quick:
        args.block, args.rounds, args.kill_block, args.kill_rounds = 2.0, 1, 4.0, 1
    env = {**BASE_ENV, **dict(item.split("=", 1) for item in args.env)}
    scenarios = [s for s in SCENARIOS if not args.scenario or s.name in args.scenario]

    print(
        f"CreateOrder through the edge, the shipped resilience policy vs a plain deadline; "
        f"per scenario both stacks run and take turns: {args.rounds} x {args.block:.1f} s blocks "
        f"per policy ({args.kill_rounds} x {args.kill_block:.1f} s with a kill -9 of payment v1 "
        f"{KILL_AT_S:.1f} s into each), after {WARM_UP_S:.1f} s unmeasured"
    )
    print(f"stack settings: {' '.join(f'{k}={v}' for k, v in sorted(env.items()))}")
    for scenario in scenarios:
        settings = " ".join(f"{k}={v}" for k, v in sorted(scenario.env.items())) or "-"
        print(f"  {scenario.name}: {settings}")
    print("plain-deadline policy (RESILIENCE_POLICY_FILE):")
    print("".join(f"  {line}\n" for line in PLAIN_DEADLINE_POLICY.splitlines()), end="")
    print(
        "orders: CreateOrder calls answered with an order (shares of those); other outcomes: "
        "other statuses and refused calls; p50/p99 of answered calls; GetOrder and "
        f"Health/Check every {READ_PAUSE_S * 1000:.0f} ms, {READ_TIMEOUT_S:.0f} s deadline\n"
    )
    # Each scenario's rows as it ends: a stack that fails to start leaves the rows before it.
    print(_table_row([name for name, _ in COLUMNS]))
    print("|" + "|".join("-" * (width + 2) for _, width in COLUMNS) + "|", flush=True)
    started = time.monotonic()
    load_before = os.getloadavg()
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-faults-") as tmp:
        for n, scenario in enumerate(scenarios):
            block_s, rounds = (
                (args.kill_block, args.kill_rounds) if scenario.kill else (args.block, args.rounds)
            )
            with policy_stacks(Path(tmp) / str(n), {**env, **scenario.env}) as stacks:
                targets = asyncio.run(_measure(scenario, stacks, block_s, rounds))
                for target in targets:
                    print(_table_row(_cells(scenario, target)), flush=True)
            notes.extend(note for target in targets for note in _notes(scenario, target))
    load_after = os.getloadavg()
    print()
    for note in notes:
        print(note)
    print(
        f"took {time.monotonic() - started:.0f} s; load average (uptime): "
        f"{' '.join(f'{x:.2f}' for x in load_before)} before, "
        f"{' '.join(f'{x:.2f}' for x in load_after)} after (1, 5, 15 min)"
    )


def _notes(scenario: Scenario, target: _Target) -> Iterator[str]:
    if target.failure_reasons:
        reason, count = target.failure_reasons.most_common(1)[0]
        yield f"{scenario.name}, {target.policy}: FAILED mostly {reason!r} ({count})"
    if target.settled or target.pending:
        ended = ", ".join(f"{k} {v}" for k, v in sorted(target.settled.items()))
        yield (
            f"{scenario.name}, {target.policy}: of the orders answered PENDING, recovery ended"
            f" {ended or 'none'} within {target.settled_s:.1f} s of the last block's end;"
            f" {len(target.pending)} still PENDING"
        )
    if target.restarts_s:
        back = ", ".join(f"{s:.2f}" for s in target.restarts_s)
        yield (
            f"{scenario.name}, {target.policy}: payment v1 restarted, serving and healthy in"
            f" Envoy {back} s after each kill"
        )


if __name__ == "__main__":
    main()
