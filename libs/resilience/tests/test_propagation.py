"""Deadline propagation across three real processes: A -> B (grpc.aio) -> C (sync grpc)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).parent
MARGIN = 0.05  # fault_service.RELAY_POLICY deadlineMargin
POLICY_TIMEOUT = 30.0  # fault_service.RELAY_POLICY timeout
# A deadline travels as a relative grpc-timeout, so each hop's deadline is later by the time
# the call spent in transit, and servers convert it between clocks (a few ms either way). On a
# loaded 2-core machine transit alone was seen at ~100 ms, so bounds allow half a second: still
# far below what a missing cap would show (30 s policy, 9.2e18 with no deadline). The exact
# margin arithmetic is unit-tested with a fake clock (test_pipeline.py).
SKEW = 0.5


@pytest.fixture
def env(proto_dir: Path) -> dict[str, str]:
    path = os.pathsep.join([str(proto_dir), str(HERE), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path}


@pytest.fixture
def servers(env: dict[str, str]) -> Iterator[tuple[str, str]]:
    procs = [
        subprocess.Popen(
            [sys.executable, str(HERE / "fault_service.py"), mode],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for mode in ("aio", "sync")
    ]
    try:
        ports = []
        for proc in procs:
            assert proc.stdout is not None
            ports.append(proc.stdout.readline().strip())
        assert all(p.isdigit() for p in ports), ports
        yield f"127.0.0.1:{ports[0]}", f"127.0.0.1:{ports[1]}"
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)


def hop_deadlines(env: dict[str, str], timeout: str, b: str, c: str) -> list[float]:
    out = subprocess.run(
        [sys.executable, str(HERE / "fault_service.py"), "client", timeout, b, c],
        env=env, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return [float(x) for x in json.loads(out.stdout)]


def test_c_sees_a_deadline_no_later_than_a_set_minus_margins(
    env: dict[str, str], servers: tuple[str, str]
) -> None:
    b, c = servers
    at_b, at_c = hop_deadlines(env, "3", b, c)
    assert 0 < at_b <= 3 + SKEW
    # B's outbound policy allows 30 s: C sees less only because B capped it by its inbound deadline.
    assert 0 < at_c <= at_b - MARGIN + SKEW


def test_without_an_inbound_deadline_b_uses_its_policy_timeout(
    env: dict[str, str], servers: tuple[str, str]
) -> None:
    b, c = servers
    at_b, at_c = hop_deadlines(env, "none", b, c)
    assert at_b == -1  # B saw no deadline (time_remaining() ~9.2e18, grpc#26236) ...
    assert (
        3 < at_c <= POLICY_TIMEOUT + SKEW
    )  # ... and still sent one: its own, not a failing 9.2e18
