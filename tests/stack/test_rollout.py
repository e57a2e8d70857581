"""`make rollout` on the running mesh, judged by its real Prometheus: a healthy payment v2 is
promoted to 100%, one that Envoy's fault filter makes fail 20% of its calls is rolled back to 0%
within two checks. Load is a small background client charging through the internal listener,
as the order service does; one step of 10 s keeps each case short."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from mesh.common.v1 import money_pb2
from mesh.payment.v1 import payment_pb2, payment_pb2_grpc
from meshctl import faults
from meshctl.cli import ROLLED_BACK, ROLLOUT_LOG, main
from meshctl.stack import Stack
from meshkit.ids import new_id

pytestmark = pytest.mark.stack

#: One step, then promotion: a check every 10 s (two of Prometheus's 5 s scrapes).
ROLLOUT = {"ROLLOUT_STEPS": "50", "ROLLOUT_INTERVAL_S": "10", "ROLLOUT_MAX_FAILED_CHECKS": "2"}
#: Between one client's calls: about 2 x 40 calls a second, half of them to v2 at the step.
PAUSE_S = 0.025


class Load:
    """Charges from a few threads until stopped; each call's outcome is ignored."""

    def __init__(self, channel: grpc.Channel, threads: int = 2) -> None:
        self._stub = payment_pb2_grpc.PaymentServiceStub(channel)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            request = payment_pb2.ChargeRequest(
                order_id=new_id("ord"),
                customer_id="cust-rollout",
                amount=money_pb2.Money(currency_code="USD", amount_minor=100),
                request_id=new_id("req"),
            )
            with contextlib.suppress(grpc.RpcError):  # the aborted share, when rolling back
                self._stub.Charge(request, timeout=5)
            self._stop.wait(PAUSE_S)


@pytest.fixture
def mesh(stack: Stack) -> Iterator[Stack]:
    """The session's mesh, left afterwards as it was found: 90/10, no fault."""
    try:
        yield stack
    finally:
        faults.clear(stack.config.admin_url)
        stack.set_canary_weights(90, 10)


def _env_of(stack: Stack) -> dict[str, str]:
    c = stack.config
    ports = {var: str(port) for var, port in c.ports.items()}
    return {"MESH_VAR_DIR": str(c.run_dir.parent), **ports, **ROLLOUT}


def _weights(stack: Stack) -> dict[str, str]:
    entries = json.loads(stack.envoy.get("/runtime"))["entries"]
    return {
        cluster: entries[f"routing.payment.{cluster}"]["final_value"]
        for cluster in ("payment_v1", "payment_v2")
    }


def _decisions(log: Path, since: int) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.read_text().splitlines()[since:]]


def _lines(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_a_healthy_canary_is_promoted_to_all_traffic(mesh: Stack, as_order: grpc.Channel) -> None:
    log = mesh.config.run_dir / ROLLOUT_LOG
    before = _lines(log)

    with Load(as_order):
        assert main(["rollout"], _env_of(mesh)) == 0

    assert _weights(mesh) == {"payment_v1": "0", "payment_v2": "100"}
    decisions = _decisions(log, before)
    assert [d["action"] for d in decisions] == ["start", "promote"]
    promoted = decisions[-1]
    canary = promoted["canary"]
    assert isinstance(canary, dict)
    assert canary["requests"] >= 10
    assert canary["success_percent"] >= 99.0


def test_a_canary_failing_a_fifth_of_its_calls_is_rolled_back_within_two_checks(
    mesh: Stack, as_order: grpc.Channel
) -> None:
    log = mesh.config.run_dir / ROLLOUT_LOG
    before = _lines(log)
    faults.set_fault(mesh.config.admin_url, "payment_v2", abort_percent=20, code="UNAVAILABLE")

    with Load(as_order):
        assert main(["rollout"], _env_of(mesh)) == ROLLED_BACK

    assert _weights(mesh) == {"payment_v1": "100", "payment_v2": "0"}
    decisions = _decisions(log, before)
    assert [d["action"] for d in decisions] == ["start", "hold", "rollback"]
    for check in decisions[1:]:
        canary = check["canary"]
        assert isinstance(canary, dict)
        # Envoy's aborted calls are v2's failures, though no v2 server saw them.
        assert canary["success_percent"] < 99.0, check["text"]
