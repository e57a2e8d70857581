"""Faults switched inside a running payment server through its fault file (meshkit.faults):
they replace the start-up settings on the next calls, per deployment, and removing the file
gives the start-up settings back."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest

from meshkit.faults import Fault, fault_path, write_fault
from meshkit.testing import wait_until

from .conftest import Payments, charge_request

Start = Callable[..., Payments]


def _code(payments: Payments) -> grpc.StatusCode:
    try:
        payments.stub.Charge(charge_request(), timeout=5)
    except grpc.RpcError as error:
        code: grpc.StatusCode = error.code()
        return code
    return grpc.StatusCode.OK


def test_a_fault_file_takes_over_from_the_start_up_settings_and_its_removal_gives_them_back(
    start: Start,
) -> None:
    slept: list[float] = []
    v1 = start(version="v1", fault_rate=1.0, fault_code=grpc.StatusCode.INTERNAL)
    v2 = start(version="v2", sleep=slept.append)
    path = fault_path(v2.settings.faults_dir, "payment_v2")
    assert path == v2.settings.fault_file

    write_fault(path, Fault(abort_percent=100, code=grpc.StatusCode.DATA_LOSS))
    wait_until(lambda: _code(v2) is grpc.StatusCode.DATA_LOSS, timeout_s=5, what="v2's fault")
    with pytest.raises(grpc.RpcError) as raised:
        v2.stub.Charge(charge_request(), timeout=5)
    assert raised.value.details() == "injected fault (payment_v2.json: abort_percent=100)"
    assert _code(v1) is grpc.StatusCode.INTERNAL  # v1 keeps its own start-up fault

    write_fault(path, Fault(delay_ms=250, delay_percent=100))
    wait_until(lambda: _code(v2) is grpc.StatusCode.OK, timeout_s=5, what="the abort lifted")
    slept.clear()
    v2.stub.Charge(charge_request(), timeout=5)
    assert slept == [0.25]  # the delay holds the server's thread, in the server

    path.unlink()
    wait_until(
        lambda: _code(v2) is grpc.StatusCode.OK and not _slept(v2, slept),
        timeout_s=5,
        what="the start-up settings (no fault) back",
    )


def _slept(payments: Payments, slept: list[float]) -> bool:
    slept.clear()
    payments.stub.Charge(charge_request(), timeout=5)
    return bool(slept)
