"""``python -m payment_service`` as real processes: v1 and v2 side by side on one DATA_DIR."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from mesh.payment.v1 import payment_pb2_grpc
from meshkit.testing import free_port, is_serving, wait_until

from .conftest import charge_request, row_count


@dataclass
class Process:
    version: str
    port: int
    metrics_port: int
    popen: subprocess.Popen[bytes]

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    # Plaintext, so the test can call the process directly (mTLS is tested through the stack).
    env = {**os.environ, "DATA_DIR": str(data_dir), "MESH_HOST": "127.0.0.1", "MESH_MTLS": "0"}
    return {**env, **extra}


def _launch(data_dir: Path, version: str) -> Process:
    port, metrics_port = free_port(), free_port()
    env = _env(
        data_dir,
        PAYMENT_VERSION=version,
        PAYMENT_PORT=str(port),
        PAYMENT_METRICS_PORT=str(metrics_port),
    )
    # The child keeps its own copy of the log's descriptor; the parent's closes here.
    with (data_dir.parent / f"payment-{version}.log").open("wb") as log:
        popen = subprocess.Popen(
            [sys.executable, "-m", "payment_service"],
            env=env,
            cwd=data_dir.parent,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    return Process(version, port, metrics_port, popen)


def _ready(process: Process) -> bool:
    if process.popen.poll() is not None:
        raise RuntimeError(f"payment {process.version} exited with {process.popen.returncode}")
    return is_serving(process.target)


@pytest.fixture
def deployments(tmp_path: Path) -> Iterator[tuple[Process, Process]]:
    data_dir = tmp_path / "data"
    processes = (_launch(data_dir, "v1"), _launch(data_dir, "v2"))
    try:
        for process in processes:
            wait_until(
                functools.partial(_ready, process),
                timeout_s=15,
                what=f"payment {process.version} on {process.port}",
            )
        yield processes
    finally:
        for process in processes:
            if process.popen.poll() is None:
                process.popen.send_signal(signal.SIGTERM)
        for process in processes:
            process.popen.wait(timeout=10)


def test_v1_and_v2_processes_share_payments_and_make_one_per_request_id(
    deployments: tuple[Process, Process], tmp_path: Path
) -> None:
    channels = [grpc.insecure_channel(p.target) for p in deployments]
    try:
        v1, v2 = (payment_pb2_grpc.PaymentServiceStub(c) for c in channels)
        request = charge_request()
        on_v1 = v1.Charge(request, timeout=5)
        assert on_v1.version == "v1"
        assert v2.Charge(request, timeout=5) == on_v1

        racing = charge_request()
        stubs = (v1, v2)
        with ThreadPoolExecutor(max_workers=16) as pool:
            results = list(pool.map(lambda i: stubs[i % 2].Charge(racing, timeout=10), range(40)))
        assert len({p.payment_id for p in results}) == 1
        assert row_count(tmp_path / "data", "request_id = ?", racing.request_id) == 1
        assert row_count(tmp_path / "data") == 2
    finally:
        for channel in channels:
            channel.close()

    with urllib.request.urlopen(
        f"http://127.0.0.1:{deployments[1].metrics_port}/metrics", timeout=5
    ) as response:
        metrics = response.read().decode()
    assert 'grpc_method="Charge"' in metrics
    assert "grpc_server_handled_total" in metrics


def test_sigterm_stops_a_deployment_cleanly(deployments: tuple[Process, Process]) -> None:
    process = deployments[0].popen
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 0


@pytest.mark.parametrize(
    ("var", "value"),
    [("PAYMENT_FAULT_CODE", "NOPE"), ("PAYMENT_FAULT_RATE", "2"), ("PAYMENT_VERSION", "v9")],
)
def test_bad_settings_stop_start_up_naming_the_variable(
    tmp_path: Path, var: str, value: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "payment_service"],
        env=_env(tmp_path / "data", PAYMENT_PORT=str(free_port()), **{var: value}),
        cwd=tmp_path,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert f"{var}=" in result.stderr.decode()
    assert not (tmp_path / "data" / "payment.db").exists()
