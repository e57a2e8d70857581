"""What the fault benchmarks share (``bench faults``, ``bench.chaos``): a stack per policy —
the order service's resilience.yaml and a plain per-call deadline — started as ``make up``
starts them, the Charge attempts that reached payment, a kill -9 of payment v1, and a
CreateOrder that honours a pushback."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TextIO

import grpc

from mesh.common.v1 import money_pb2
from mesh.order.v1 import order_pb2, order_pb2_grpc
from meshctl import registry
from meshctl.stack import Stack
from meshctl.testing import metric_sum, running_stack
from meshkit.errors import PUSHBACK_HEADER
from meshkit.health import SERVING
from resilience import metric_names

#: Only the per-call deadline the shipped policy has too: with no retryPolicy a call is one
#: attempt, and null turns off what a missing section would default to.
PLAIN_DEADLINE_POLICY = """\
methodConfig:
  - name: [{}]
    timeout: 2s
retryThrottling: null
circuitBreaker: null
bulkhead: null
"""
RESILIENCE = "resilience.yaml"
PLAIN_DEADLINE = "plain deadline"
POLICIES = (RESILIENCE, PLAIN_DEADLINE)

#: Stock no run sells out, so every order's fate is the fault's doing; one customer places
#: every order, so no per-customer rate limit.
BASE_ENV = {"INVENTORY_SEED_STOCK": "1000000", "ORDER_RATE_PER_S": "0"}
SKUS = [f"SKU-{n:04d}" for n in range(1, 21)]
CREATE_TIMEOUT_S = 10.0

CHARGE_METHOD = f"/{registry.PAYMENT_SERVICE}/Charge"
#: Each payment deployment's /metrics port, by its name (supervisor's program, Envoy's cluster).
PAYMENT_METRICS = {
    deployment.name: deployment.backend.metrics
    for deployment in registry.CANARY
    if deployment.backend is not None and deployment.backend.metrics is not None
}
KILLED = registry.PAYMENT_V1
#: How long a killed payment v1 may take to be back (restarted, and healthy in Envoy).
RESTART_GIVE_UP_S = 30.0


def order_metric(stack: Stack, name: str, **labels: str) -> float:
    """``name`` summed over the order service's samples of the payment Charge method."""
    port = stack.config.ports["ORDER_METRICS_PORT"]
    return metric_sum(port, name, target="payment", method=CHARGE_METHOD, **labels)


class ChargeCounts:
    """Charge attempts that reached payment and the order service's Charge calls, since the
    first reading. A payment process's counters die with it, so each reading remembers whose
    they were: a new process's count is all new (read the old one just before killing it)."""

    def __init__(self, stack: Stack) -> None:
        self._stack = stack
        self._seen: dict[str, tuple[int, float]] = {}
        self.reached = 0.0
        self._calls_at_start = order_metric(stack, metric_names.CALLS)
        self.read_payment()

    def read_payment(self) -> None:
        """Adds what each payment process handled since the last reading; a process that is
        down (killed, not yet restarted) is read next time, by then as its successor."""
        pids = self._stack.supervisor.pids()
        for program, metrics_port in PAYMENT_METRICS.items():
            try:
                handled = metric_sum(
                    self._stack.config.port(metrics_port),
                    "grpc_server_handled_total",
                    grpc_service=registry.PAYMENT_SERVICE,
                    grpc_method="Charge",
                )
            except OSError:
                continue
            now = pids.get(program, 0)
            if now != self._stack.supervisor.pids().get(program, 0):
                continue  # restarted while read: whose count this is, is unknown
            pid, before = self._seen.get(program, (now, handled))
            self.reached += handled - before if pid == now else handled
            self._seen[program] = (now, handled)

    def per_call(self) -> tuple[float, float]:
        """(attempts that reached payment, Charge calls) since the first reading."""
        self.read_payment()
        return self.reached, order_metric(self._stack, metric_names.CALLS) - self._calls_at_start


def status_name(order: order_pb2.Order) -> str:
    return order_pb2.OrderStatus.Name(order.status).removeprefix("ORDER_STATUS_")


async def create_order(
    stub: order_pb2_grpc.OrderServiceStub, request_id: str, i: int
) -> order_pb2.Order:
    """One new order of one line; a refusal with a pushback is honoured, as a well-behaved
    client would, so refused calls do not spin the two cores the stacks share."""
    try:
        order: order_pb2.Order = await stub.CreateOrder(
            order_pb2.CreateOrderRequest(
                customer_id="cust-faults",
                request_id=request_id,
                lines=[money_pb2.Line(sku=SKUS[i % len(SKUS)], quantity=1)],
            ),
            timeout=CREATE_TIMEOUT_S,
        )
    except grpc.aio.AioRpcError as error:
        pushback = dict(error.trailing_metadata() or ()).get(PUSHBACK_HEADER)
        if pushback is not None:
            await asyncio.sleep(int(pushback) / 1000)
        raise
    return order


async def kill_payment_v1(stack: Stack, counts: ChargeCounts | None) -> float:
    """kill -9 of payment v1; returns, once supervisord has restarted it and Envoy's health
    check finds it serving, how many seconds that took."""
    if counts is not None:
        await asyncio.to_thread(counts.read_payment)
    killed = (await asyncio.to_thread(stack.supervisor.pids))[KILLED.name]
    os.kill(killed, signal.SIGKILL)
    killed_at = time.monotonic()
    while not await asyncio.to_thread(_back, stack, killed):
        if time.monotonic() - killed_at > RESTART_GIVE_UP_S:
            raise SystemExit(f"{KILLED.name} was not back {RESTART_GIVE_UP_S} s after")
        await asyncio.sleep(0.02)
    return time.monotonic() - killed_at


def _back(stack: Stack, killed: int) -> bool:
    """A new process answers its own health check and Envoy's sees it healthy (Envoy may not
    have noticed the kill yet, so its view alone would say so at once)."""
    pid = stack.supervisor.pids().get(KILLED.name)
    if pid in (None, killed) or KILLED.probe(stack.config) != SERVING:
        return False
    return stack.envoy.cluster_health().get(KILLED.name) == "healthy"


@contextlib.contextmanager
def policy_stacks(
    base: Path, env: Mapping[str, str], out: TextIO | None = None
) -> Iterator[dict[str, Stack]]:
    """One stack per policy (POLICIES), both running until the block ends. They start one
    after the other (a stack picks free ports as it starts: two at once could pick the same
    one) and stop at once, in threads, as stopping takes a stack ~5 s."""
    base.mkdir(parents=True, exist_ok=True)
    plain_policy = base / "plain-deadline.yaml"
    plain_policy.write_text(PLAIN_DEADLINE_POLICY)
    policies = {RESILIENCE: {}, PLAIN_DEADLINE: {"RESILIENCE_POLICY_FILE": str(plain_policy)}}
    running: list[contextlib.AbstractContextManager[Stack]] = []
    stacks: dict[str, Stack] = {}
    with contextlib.ExitStack() as quiet_stack:
        quiet = out or quiet_stack.enter_context(open(os.devnull, "w"))
        try:
            for n, (policy, extra) in enumerate(policies.items()):
                manager = running_stack(base / str(n), {**env, **extra}, out=quiet)
                stacks[policy] = manager.__enter__()
                running.append(manager)
            yield stacks
        finally:
            with ThreadPoolExecutor(len(policies)) as pool:
                stopping = [pool.submit(manager.__exit__, None, None, None) for manager in running]
                for future in stopping:
                    future.result()
