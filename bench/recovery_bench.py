"""The order service's recovery on a real stack: a kill -9 of the order process under load, and a
backlog of PENDING orders draining.

Takeover: 8 clients keep CreateOrder in flight through the edge (each Charge takes
PAYMENT_LATENCY_MS, so the orders are mid-saga), and the order process is killed with SIGKILL;
supervisord restarts it. Each client retries its request_id until it gets an answer. Reported:
when the new process appeared, when each order that was in flight ended (read from the order
database), and what the retries answered (a PENDING answer is a client left without its order).

Backlog: N orders are written into the order database as a crashed process leaves them (PENDING
at RESERVE, idle for a minute), and the time until recovery has ended all of them is reported.

Both on a stack started as ``make up`` starts it, on free ports with its own redis-server.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from mesh.common.v1 import money_pb2
from mesh.order.v1 import order_pb2, order_pb2_grpc
from meshctl.stack import Stack
from meshctl.testing import running_stack

SKU = "SKU-0005"
CLIENT_DEADLINE_S = 10.0
RETRY_PAUSE_S = 0.1
POLL_S = 0.05
#: How long the takeover and the drain may take before the bench gives up on them.
GIVE_UP_S = 180.0


@dataclass
class _Client:
    """One client's orders: request_id -> what each CreateOrder try ended with."""

    tries: dict[str, list[str]] = field(default_factory=dict)
    answered: dict[str, order_pb2.Order] = field(default_factory=dict)
    answered_at: dict[str, float] = field(default_factory=dict)


def _order_db(stack: Stack) -> sqlite3.Connection:
    path = stack.config.data_dir / "order.db"
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)


def _statuses(stack: Stack, order_ids: Sequence[str]) -> dict[str, str]:
    if not order_ids:
        return {}
    marks = ",".join("?" * len(order_ids))
    with contextlib.closing(_order_db(stack)) as conn:
        rows = conn.execute(
            f"SELECT order_id, status FROM orders WHERE order_id IN ({marks})",  # noqa: S608
            list(order_ids),
        ).fetchall()
    return dict(rows)


def _pending_ids(stack: Stack) -> list[str]:
    with contextlib.closing(_order_db(stack)) as conn:
        rows = conn.execute("SELECT order_id FROM orders WHERE status = 'PENDING'").fetchall()
    return [order_id for (order_id,) in rows]


def _order_pid(stack: Stack) -> int:
    return stack.supervisor.pids().get("order", 0)


def _create_until_answered(
    orders: order_pb2_grpc.OrderServiceStub, client: _Client, stop: threading.Event
) -> None:
    while not stop.is_set():
        request_id = f"bench-{uuid.uuid4()}"
        request = order_pb2.CreateOrderRequest(
            customer_id="cust-bench",
            request_id=request_id,
            lines=[money_pb2.Line(sku=SKU, quantity=1)],
        )
        tries = client.tries.setdefault(request_id, [])
        give_up = time.monotonic() + GIVE_UP_S
        while time.monotonic() < give_up:
            try:
                answer = orders.CreateOrder(request, timeout=CLIENT_DEADLINE_S)
            except grpc.RpcError as error:
                tries.append(error.code().name)
                time.sleep(RETRY_PAUSE_S)
                continue
            tries.append(order_pb2.OrderStatus.Name(answer.status))
            client.answered[request_id] = answer
            client.answered_at[request_id] = time.monotonic()
            break


def _wait(what: str, done: object, deadline: float) -> None:
    while not done():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up waiting for {what}")
        time.sleep(POLL_S)


def takeover(base: Path, in_flight: int, latency_ms: int, env: dict[str, str]) -> None:
    # One customer places every order: no per-customer rate limit.
    stack_env = {
        "PAYMENT_LATENCY_MS": str(latency_ms),
        "INVENTORY_SEED_STOCK": "100000",
        "ORDER_RATE_PER_S": "0",
        **env,
    }
    with running_stack(base, stack_env) as stack:
        clients = [_Client() for _ in range(in_flight)]
        stop = threading.Event()
        with grpc.insecure_channel(stack.config.edge_target) as channel:
            orders = order_pb2_grpc.OrderServiceStub(channel)
            threads = [
                threading.Thread(target=_create_until_answered, args=(orders, c, stop))
                for c in clients
            ]
            for thread in threads:
                thread.start()
            time.sleep(3.0)  # warm: every client has had orders confirmed
            _wait("orders in flight", lambda: len(_pending_ids(stack)) >= in_flight // 2, 1e12)
            old_pid = _order_pid(stack)
            in_flight_ids = _pending_ids(stack)
            os.kill(old_pid, signal.SIGKILL)
            killed_at = time.monotonic()
            stop.set()  # each client finishes the order it has, retrying it, and stops
            deadline = killed_at + GIVE_UP_S
            _wait("the restart", lambda: _order_pid(stack) not in (0, old_pid), deadline)
            restarted_at = time.monotonic()
            ended_at: dict[str, float] = {}

            def all_ended() -> bool:
                now = time.monotonic()
                for order_id, status in _statuses(stack, in_flight_ids).items():
                    if status != "PENDING":
                        ended_at.setdefault(order_id, now)
                return len(ended_at) == len(in_flight_ids)

            _wait("the in-flight orders to end", all_ended, deadline)
            for thread in threads:
                thread.join(GIVE_UP_S)
        retried = {
            request_id: (tries, client.answered.get(request_id), client.answered_at.get(request_id))
            for client in clients
            for request_id, tries in client.tries.items()
            if len(tries) > 1
        }
        restart_s = restarted_at - killed_at
        ends = sorted(t - killed_at for t in ended_at.values())
        print(
            f"takeover: {len(in_flight_ids)} orders in flight at the kill; new process after"
            f" {restart_s:.1f} s; orders ended {ends[0]:.1f}..{ends[-1]:.1f} s after the kill"
            f" ({ends[0] - restart_s:.1f}..{ends[-1] - restart_s:.1f} s after the restart)"
        )
        for request_id, (tries, answer, at) in sorted(retried.items()):
            final = "none" if answer is None else order_pb2.OrderStatus.Name(answer.status)
            when = "-" if at is None else f"{at - killed_at:.1f} s after the kill"
            print(f"  retried {request_id[:14]}: {len(tries)} tries, answered {final} ({when})")


def _crashed_rows(count: int) -> Iterator[tuple[object, ...]]:
    """Orders as a process that died before its first call leaves them, idle for a minute."""
    idle_since = time.time_ns() // 1_000 - 60_000_000
    for n in range(count):
        order_id = f"ord_{uuid.uuid4().hex}"
        lines = f'[{{"sku": "SKU-{1 + n % 20:04d}", "quantity": 1}}]'
        yield (order_id, f"backlog-{uuid.uuid4()}", "-", "cust-backlog", lines, idle_since + n)


def backlog(base: Path, count: int, env: dict[str, str]) -> None:
    with running_stack(base, env) as stack:
        path = stack.config.data_dir / "order.db"
        rows = list(_crashed_rows(count))
        with contextlib.closing(sqlite3.connect(path, timeout=10)) as conn, conn:
            conn.executemany(
                "INSERT INTO orders (order_id, request_id, fingerprint, customer_id, lines,"
                " status, step, create_time, update_time)"
                " VALUES (?, ?, ?, ?, ?, 'PENDING', 'RESERVE', ?6, ?6)",
                rows,
            )
        written_at = time.monotonic()
        ids = [str(row[0]) for row in rows]
        _wait(
            "the backlog to drain",
            lambda: "PENDING" not in _statuses(stack, ids).values(),
            written_at + GIVE_UP_S,
        )
        drained_s = time.monotonic() - written_at
        ended = _statuses(stack, ids)
        confirmed = sum(1 for status in ended.values() if status == "CONFIRMED")
        print(
            f"backlog: {count} PENDING orders ended in {drained_s:.1f} s"
            f" ({count / drained_s:.0f} orders/s; {confirmed} CONFIRMED)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--latency-ms", type=int, default=300, help="PAYMENT_LATENCY_MS")
    parser.add_argument("--backlog", type=int, default=500, help="PENDING orders to drain")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the stacks")
    parser.add_argument("--only", choices=("takeover", "backlog"))
    parser.add_argument("--quick", action="store_true", help="a backlog of 100 orders")
    args = parser.parse_args()
    if args.quick:
        args.backlog = 100
    env = dict(item.split("=", 1) for item in args.env)
    with tempfile.TemporaryDirectory(prefix="bench-recovery-") as tmp:
        if args.only in (None, "takeover"):
            takeover(Path(tmp) / "takeover", args.in_flight, args.latency_ms, env)
        if args.only in (None, "backlog"):
            backlog(Path(tmp) / "backlog", args.backlog, env)


if __name__ == "__main__":
    main()
