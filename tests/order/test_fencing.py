"""A runner paused past its lease, as a real process: ``python -m order_service`` is stopped
(SIGSTOP) in the middle of its saga, recovery in this process takes the order over on the same
SQLite file and Redis, and the stopped runner, let go again, has its writes refused."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from mesh.inventory.v1 import inventory_pb2
from mesh.order.v1 import order_pb2, order_pb2_grpc
from meshkit.testing import free_port, is_serving, wait_until
from order_service.config import Settings
from order_service.domain import Status
from order_service.server import build_app

from .conftest import SEED_STOCK, Inventory, StartPayments, proto_lines

SKU = "SKU-0005"
#: Every Charge takes this long, so the stopped runner is caught with one in flight.
PAYMENT_LATENCY_MS = 1_000
LEASE_MS = 1_000


@pytest.fixture
def runner_env(order_env: dict[str, str], start_payments: StartPayments) -> dict[str, str]:
    slow = start_payments(latency_ms=PAYMENT_LATENCY_MS)
    return {**order_env, "PAYMENT_TARGET": slow.target, "ORDER_LEASE_MS": str(LEASE_MS)}


@pytest.fixture
def runner(runner_env: dict[str, str], data_dir: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The order service as its own OS process; its log is ``runner.log`` beside DATA_DIR."""
    port = free_port()
    env = {
        **os.environ,
        **runner_env,
        "MESH_HOST": "127.0.0.1",
        "ORDER_PORT": str(port),
        "ORDER_METRICS_PORT": str(free_port()),
    }
    data_dir.mkdir(parents=True, exist_ok=True)
    with (data_dir.parent / "runner.log").open("wb") as log:
        popen = subprocess.Popen(
            [sys.executable, "-m", "order_service"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    popen.port = port  # type: ignore[attr-defined]
    try:
        wait_until(lambda: is_serving(f"127.0.0.1:{port}"), timeout_s=20, what="the order process")
        yield popen
    finally:
        os.kill(popen.pid, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
        popen.terminate()
        popen.wait(timeout=10)


def _row(data_dir: Path, request_id: str) -> sqlite3.Row | None:
    with sqlite3.connect(data_dir / "order.db") as conn:
        conn.row_factory = sqlite3.Row
        found: sqlite3.Row | None = conn.execute(
            "SELECT * FROM orders WHERE request_id = ?", (request_id,)
        ).fetchone()
    conn.close()
    return found


def test_a_runner_stopped_past_its_lease_cannot_write_after_recovery_took_the_order_over(
    runner: subprocess.Popen[bytes],
    runner_env: dict[str, str],
    data_dir: Path,
    inventory: Inventory,
    start_payments: StartPayments,
) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{runner.port}")  # type: ignore[attr-defined]
    stub = order_pb2_grpc.OrderServiceStub(channel)
    request = order_pb2.CreateOrderRequest(
        customer_id="cust-1", lines=proto_lines((SKU, 2)), request_id="fenced-1"
    )
    recovery = build_app(Settings.from_env(runner_env))
    payments = start_payments()  # only to read the payment rows of the shared file
    pool = ThreadPoolExecutor(2)
    try:
        answer: Future[order_pb2.Order] = pool.submit(stub.CreateOrder, request, timeout=30)
        # Reserved, and the Charge (a second long) on its way: stop the runner there.
        wait_until(
            lambda: inventory.available(SKU) == SEED_STOCK - 2, timeout_s=10, what="the Reserve"
        )
        os.kill(runner.pid, signal.SIGSTOP)
        row = _row(data_dir, "fenced-1")
        assert row is not None
        order_id = row["order_id"]
        assert (row["step"], row["fence"]) == ("RESERVE", 1)
        # Its Charge is done on payment's side; the answer waits in the stopped runner's socket.
        wait_until(
            lambda: payments.states(order_id) == ["CAPTURED"], timeout_s=10, what="the Charge"
        )

        # Recovery takes the order over once the stopped runner's lease has run out.
        def take_over() -> None:
            wait_until(
                lambda: recovery.recovery.run_once().finished == 1,
                timeout_s=15,
                what="recovery to finish the order",
            )

        finished = pool.submit(take_over)
        wait_until(
            lambda: (_row(data_dir, "fenced-1") or {"fence": 0})["fence"] == 2,
            timeout_s=10,
            what="recovery to stamp its token",
        )
        # Let the first runner go while recovery is still at its own (slow) Charge: the row
        # has no write of recovery's yet, only its token.
        os.kill(runner.pid, signal.SIGCONT)
        first = answer.result(timeout=30)
        finished.result(timeout=30)
    finally:
        os.kill(runner.pid, signal.SIGCONT)
        pool.shutdown(wait=True)
        channel.close()
        recovery.close()

    # The first runner's next write was refused: its run ended there, as a lost lease.
    assert first.status == order_pb2.ORDER_STATUS_PENDING
    log = (data_dir.parent / "runner.log").read_text()
    assert f"{order_id}: lease lost after CHARGE" in log, log[-2_000:]
    assert "write with fence 1 refused (row has 2)" in log
    done = _row(data_dir, "fenced-1")
    assert done is not None
    assert (done["status"], done["fence"]) == (Status.CONFIRMED.value, 2)
    # Stock and money moved once: one capture, the two units sold (not held, not released).
    assert payments.states(order_id) == ["CAPTURED"]
    assert inventory.available(SKU) == SEED_STOCK - 2
    # Reserve is idempotent by order_id: it answers the order's one reservation, committed.
    committed = inventory.reserve(order_id, (SKU, 2)).state
    assert committed == inventory_pb2.RESERVATION_STATE_COMMITTED
