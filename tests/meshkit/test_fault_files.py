"""meshkit.faults: a fault's bounds, its file, and how often a server looks at that file."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest

from meshkit.faults import Fault, FaultError, FaultFile, fault_path, parse_code, write_fault


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"abort_percent": 101}, "abort_percent"),
        ({"abort_percent": -1}, "abort_percent"),
        ({"delay_percent": 1000}, "delay_percent"),
        ({"delay_ms": -5}, "delay_ms"),
        ({"delay_ms": 60_001}, "delay_ms"),
        ({"abort_percent": 2.5}, "abort_percent"),
        ({"code": grpc.StatusCode.OK}, "code"),
    ],
)
def test_a_fault_out_of_range_is_refused_naming_the_field(
    fields: dict[str, object], named: str
) -> None:
    with pytest.raises(FaultError, match=named):
        Fault(**fields)


def test_codes_parse_by_name_in_any_case_and_ok_is_no_fault() -> None:
    assert parse_code(" unavailable ") is grpc.StatusCode.UNAVAILABLE
    for bad in ("OK", "SLOW", ""):
        with pytest.raises(FaultError, match="must be one of"):
            parse_code(bad)


def test_describe_says_what_is_in_force() -> None:
    assert Fault().describe() == "none"
    assert not Fault(delay_ms=800).active  # a delay on 0% of calls is no fault
    both = Fault(abort_percent=20, delay_ms=800, delay_percent=50)
    assert both.describe() == "abort 20% UNAVAILABLE, delay 800 ms on 50%"


def test_a_fault_survives_its_json() -> None:
    fault = Fault(abort_percent=7, code=grpc.StatusCode.INTERNAL, delay_ms=30, delay_percent=1)
    assert Fault.from_json(fault.to_json()) == fault
    for bad in ("[]", "{", '{"abort_percent": 500}', '{"rate": 1}', '{"code": 14}'):
        with pytest.raises(FaultError):
            Fault.from_json(bad)


def test_the_file_is_looked_at_once_per_interval_and_read_again_only_when_it_changed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    path = fault_path(tmp_path, "payment_v2")
    live = FaultFile(path, interval_s=0.5, clock=clock)
    assert live.current() is None  # no file: the server's start-up settings

    write_fault(path, Fault(abort_percent=20))
    assert live.current() is None  # not looked at again within the interval
    clock.now += 0.5
    assert live.current() == Fault(abort_percent=20)

    path.write_text("{not json")
    clock.now += 0.5
    assert live.current() == Fault(abort_percent=20)  # a bad file leaves the fault as it was
    assert "not a fault file" in caplog.text

    write_fault(path, Fault(delay_ms=800, delay_percent=100))
    clock.now += 0.4
    assert live.current() == Fault(abort_percent=20)
    clock.now += 0.1
    assert live.current() == Fault(delay_ms=800, delay_percent=100)

    path.unlink()
    clock.now += 0.5
    assert live.current() is None


def test_a_write_is_whole_and_leaves_no_partial_file(tmp_path: Path) -> None:
    path = fault_path(tmp_path / "faults", "payment_v1")
    write_fault(path, Fault(abort_percent=1))
    write_fault(path, Fault(abort_percent=2))
    assert os.listdir(path.parent) == ["payment_v1.json"]
    assert Fault.from_json(path.read_text()) == Fault(abort_percent=2)
