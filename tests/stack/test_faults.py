"""Faults switched live on the running mesh, per target, with no restart: Envoy's fault filter on
the internal listener (meshctl.faults.set_fault, as `make fault` calls it) and payment's own
server knobs (AT=server). Calls go straight to the internal listener as the order service makes
them (its certificate); Envoy's counters and the payment servers' own say where each landed."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from mesh.common.v1 import money_pb2
from mesh.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from mesh.payment.v1 import payment_pb2, payment_pb2_grpc
from meshctl import faults
from meshctl.cli import main
from meshctl.stack import Stack
from meshkit.ids import new_id
from meshkit.testing import wait_until

from ._probes import (
    envoy_counter,
    envoy_counters,
    metric_sum,
    order_rows,
    payment_handled,
    payment_metrics_ports,
)

pytestmark = pytest.mark.stack

CANARY_PIN = (("x-canary", "always"),)
CALLS = 40
ABORTS = "http.internal.fault.aborts_injected"
DELAYS = "http.internal.fault.delays_injected"
#: Small enough to keep the module quick; the counters, not a clock, say a delay happened.
DELAY_MS = 20
CHARGE_FAILURE = "cluster.{}.grpc.mesh.payment.v1.PaymentService.Charge.failure"


@pytest.fixture(scope="module")
def mesh(stack: Stack) -> Iterator[Stack]:
    """The session's mesh at 50/50, so a few dozen calls reach both payment deployments;
    every fault cleared and the split back at 90/10 afterwards. Orders an earlier module left
    PENDING are let finish first: recovery's calls would show in the counters checked here."""
    wait_until(
        lambda: not order_rows(stack, "status = 'PENDING'"), timeout_s=60, what="no order PENDING"
    )
    stack.set_canary_weights(50, 50)
    try:
        yield stack
    finally:
        faults.clear(stack.config.admin_url)
        faults.clear_server(stack.config.faults_dir)
        stack.set_canary_weights(90, 10)


@pytest.fixture(autouse=True)
def no_faults_left(mesh: Stack) -> Iterator[None]:
    yield
    faults.clear(mesh.config.admin_url)
    faults.clear_server(mesh.config.faults_dir)


def charge(stub: payment_pb2_grpc.PaymentServiceStub, pin: bool = False) -> str:
    """One Charge: the version that served it, or the status it failed with."""
    request = payment_pb2.ChargeRequest(
        order_id=new_id("ord"),
        customer_id="cust-faults",
        amount=money_pb2.Money(currency_code="USD", amount_minor=100),
        request_id=new_id("req"),
    )
    try:
        payment = stub.Charge(request, metadata=CANARY_PIN if pin else (), timeout=5)
    except grpc.RpcError as error:
        return str(error.code().name)
    return str(payment.version)


def get_item(channel: grpc.Channel) -> str:
    stub = inventory_pb2_grpc.InventoryServiceStub(channel)
    try:
        stub.GetItem(inventory_pb2.GetItemRequest(sku="SKU-0001"), timeout=5)
    except grpc.RpcError as error:
        return str(error.code().name)
    return "OK"


def charges(as_order: grpc.Channel, calls: int = CALLS, pin: bool = False) -> Counter[str]:
    stub = payment_pb2_grpc.PaymentServiceStub(as_order)
    return Counter(charge(stub, pin) for _ in range(calls))


def charge_failures(stack: Stack) -> dict[str, int]:
    return {c: envoy_counter(stack, CHARGE_FAILURE.format(c)) for c in ("payment_v1", "payment_v2")}


def retries(stack: Stack) -> int:
    return sum(envoy_counters(stack, r"^cluster\.\w+\.upstream_rq_retry$").values())


def test_an_abort_on_payment_v2_hits_only_the_calls_routed_to_v2_and_is_never_retried(
    mesh: Stack, as_order: grpc.Channel
) -> None:
    admin = mesh.config.admin_url
    faults.set_fault(admin, "payment_v2", abort_percent=100, code="UNAVAILABLE")
    # Envoy's workers pick a new runtime snapshot up asynchronously.
    wait_until(
        lambda: charge(_stub(as_order), pin=True) == "UNAVAILABLE",
        timeout_s=10,
        what="v2's abort in force",
    )
    served, failed, tried = payment_handled(mesh, "Charge"), charge_failures(mesh), retries(mesh)

    seen = charges(as_order)

    assert set(seen) == {"v1", "UNAVAILABLE"}, seen  # both halves of the split were hit
    after = payment_handled(mesh, "Charge")
    # Every v2-routed call was Envoy's local reply: counted as v2's gRPC failure, never
    # reaching the v2 server, and never retried onto v1 (v1 served only its own share).
    assert charge_failures(mesh) == {
        "payment_v1": failed["payment_v1"],
        "payment_v2": failed["payment_v2"] + seen["UNAVAILABLE"],
    }
    assert after == {
        "payment_v1": served["payment_v1"] + seen["v1"],
        "payment_v2": served["payment_v2"],
    }
    assert retries(mesh) == tried
    # The x-canary pin reaches v2, so it gets v2's fault too.
    assert charges(as_order, 10, pin=True) == Counter({"UNAVAILABLE": 10})
    assert faults.active(admin) == {"payment_v2": faults.Fault(abort_percent=100)}

    faults.clear(admin, "payment_v2")
    wait_until(lambda: charge(_stub(as_order), pin=True) == "v2", timeout_s=10, what="cleared")
    assert set(charges(as_order)) == {"v1", "v2"}
    assert faults.active(admin) == {}


def _stub(channel: grpc.Channel) -> payment_pb2_grpc.PaymentServiceStub:
    return payment_pb2_grpc.PaymentServiceStub(channel)


def test_an_abort_on_payment_v1_or_inventory_answers_with_the_chosen_code(
    mesh: Stack, as_order: grpc.Channel
) -> None:
    admin = mesh.config.admin_url
    faults.set_fault(admin, "payment_v1", abort_percent=100, code="DATA_LOSS")
    faults.set_fault(admin, "inventory", abort_percent=100, code="RESOURCE_EXHAUSTED")
    wait_until(
        lambda: get_item(as_order) == "RESOURCE_EXHAUSTED",
        timeout_s=10,
        what="inventory's abort in force",
    )
    wait_until(lambda: "DATA_LOSS" in charges(as_order, 10), timeout_s=10, what="v1's abort")
    aborted = envoy_counter(mesh, ABORTS)

    seen = charges(as_order)
    assert set(seen) == {"DATA_LOSS", "v2"}, seen
    assert [get_item(as_order) for _ in range(5)] == ["RESOURCE_EXHAUSTED"] * 5
    assert envoy_counter(mesh, ABORTS) == aborted + seen["DATA_LOSS"] + 5

    faults.clear(admin)
    wait_until(lambda: get_item(as_order) == "OK", timeout_s=10, what="inventory cleared")
    wait_until(lambda: set(charges(as_order)) == {"v1", "v2"}, timeout_s=10, what="v1 cleared")
    assert envoy_counter(mesh, ABORTS) == aborted + seen["DATA_LOSS"] + 5


def test_a_delay_is_per_target_and_clear_removes_it(mesh: Stack, as_order: grpc.Channel) -> None:
    admin = mesh.config.admin_url
    faults.set_fault(admin, "inventory", delay_ms=DELAY_MS)
    faults.set_fault(admin, "payment_v1", delay_ms=DELAY_MS, delay_percent=100)
    start = envoy_counter(mesh, DELAYS)
    wait_until(
        lambda: (get_item(as_order), envoy_counter(mesh, DELAYS) > start)[1],
        timeout_s=10,
        what="inventory's delay in force",
    )
    wait_until(
        lambda: (charge(_stub(as_order)), envoy_counter(mesh, DELAYS) > start + 1)[1],
        timeout_s=10,
        what="v1's delay in force",
    )
    delayed = envoy_counter(mesh, DELAYS)

    assert [get_item(as_order) for _ in range(5)] == ["OK"] * 5  # a delay fails nothing
    seen = charges(as_order)
    assert set(seen) == {"v1", "v2"}, seen
    # Each call routed to inventory or payment v1 was delayed, none routed to v2.
    assert envoy_counter(mesh, DELAYS) == delayed + 5 + seen["v1"]

    faults.set_fault(admin, "payment_v2", delay_ms=DELAY_MS)
    faults.clear(admin, "payment_v1")
    faults.clear(admin, "inventory")
    assert faults.active(admin) == {
        "payment_v2": faults.Fault(delay_ms=DELAY_MS, delay_percent=100)
    }
    wait_until(lambda: _delays_only_v2(mesh, as_order), timeout_s=10, what="only v2 delayed")

    faults.clear(admin)
    wait_until(lambda: _delays_of(mesh, as_order) == 0, timeout_s=10, what="no delay left")


def _delays_of(stack: Stack, as_order: grpc.Channel) -> int:
    """How many of a few calls to every target Envoy delayed."""
    before = envoy_counter(stack, DELAYS)
    get_item(as_order)
    charges(as_order, 10)
    return envoy_counter(stack, DELAYS) - before


def _delays_only_v2(stack: Stack, as_order: grpc.Channel) -> bool:
    before = envoy_counter(stack, DELAYS)
    get_item(as_order)
    seen = charges(as_order, 10) + charges(as_order, 2, pin=True)
    return envoy_counter(stack, DELAYS) - before == seen["v2"]


def test_server_faults_act_inside_the_payment_server_of_one_version(
    mesh: Stack, as_order: grpc.Channel
) -> None:
    directory = mesh.config.faults_dir
    faults.set_server_fault(directory, "payment_v2", abort_percent=100, code="DATA_LOSS")
    wait_until(
        lambda: charge(_stub(as_order), pin=True) == "DATA_LOSS",
        timeout_s=5,
        what="v2's server fault in force",
    )
    v2_port = payment_metrics_ports(mesh)["payment_v2"]
    data_loss = _handled(v2_port, "DATA_LOSS")

    assert charges(as_order, 5, pin=True) == Counter({"DATA_LOSS": 5})
    # The v2 server itself answered them (Envoy's fault filter would keep them from it).
    assert _handled(v2_port, "DATA_LOSS") == data_loss + 5
    seen = charges(as_order)
    assert set(seen) == {"v1", "DATA_LOSS"}, seen

    # A delay inside the server: its own handling-time histogram holds the call above 0.1 s.
    faults.set_server_fault(directory, "payment_v2", abort_percent=0, delay_ms=200)
    wait_until(lambda: charge(_stub(as_order), pin=True) == "v2", timeout_s=5, what="abort off")
    fast, total = _fast_and_total(v2_port)
    assert charges(as_order, 3, pin=True) == Counter({"v2": 3})
    assert _fast_and_total(v2_port) == (fast, total + 3)

    faults.clear_server(directory)
    wait_until(lambda: _fast_and_total_after_one(v2_port, as_order), timeout_s=5, what="cleared")
    assert faults.active_server(directory) == {}


def _handled(port: int, code: str) -> int:
    return int(metric_sum(port, "grpc_server_handled_total", grpc_method="Charge", grpc_code=code))


def _fast_and_total(port: int) -> tuple[int, int]:
    bucket = "grpc_server_handling_seconds_bucket"
    fast = metric_sum(port, bucket, grpc_method="Charge", le="0.1")
    total = metric_sum(port, "grpc_server_handling_seconds_count", grpc_method="Charge")
    return int(fast), int(total)


def _fast_and_total_after_one(port: int, as_order: grpc.Channel) -> bool:
    fast, total = _fast_and_total(port)
    charge(_stub(as_order), pin=True)
    return _fast_and_total(port) == (fast + 1, total + 1)


def test_make_fault_sets_lists_and_clears(mesh: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    env = _env_of(mesh)
    assert main(["fault", "--target", "payment_v2", "--abort", "20"], env) == 0
    assert (
        main(["fault", "--target", "inventory", "--delay-ms", "800", "--percent", "50"], env) == 0
    )
    assert main(["fault", "--target", "payment_v1", "--delay-ms", "5", "--at", "server"], env) == 0
    capsys.readouterr()

    assert main(["fault"], env) == 0
    assert capsys.readouterr().out.splitlines() == [
        "target       at      fault",
        "inventory    envoy   delay 800 ms on 50%",
        "payment_v1   server  delay 5 ms on 100%",
        "payment_v2   envoy   abort 20% UNAVAILABLE",
    ]
    assert main(["fault", "clear", "--target", "inventory"], env) == 0
    assert "inventory" not in capsys.readouterr().out
    assert main(["fault", "clear"], env) == 0
    assert capsys.readouterr().out.startswith("no faults in force")
    assert faults.active(mesh.config.admin_url) == {}


def _env_of(stack: Stack) -> dict[str, str]:
    """The environment under which `make fault` finds this stack."""
    c = stack.config
    assert c.run_dir == Path(c.run_dir.parent, "run")
    return {"MESH_VAR_DIR": str(c.run_dir.parent), **{k: str(v) for k, v in c.ports.items()}}
