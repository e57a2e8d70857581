"""``python -m inventory_service`` as a real process: env settings, health, clean SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from meshkit.testing import free_port, is_serving, wait_until


def _env(**extra: str) -> dict[str, str]:
    # Plaintext, so the test can call the process directly (mTLS is tested through the stack).
    return {**os.environ, "PYTHONUNBUFFERED": "1", "MESH_MTLS": "0", **extra}


def test_runs_from_the_environment_and_stops_on_sigterm(tmp_path: Path, redis_url: str) -> None:
    port, metrics_port = free_port(), free_port()
    env = _env(
        INVENTORY_PORT=str(port),
        INVENTORY_METRICS_PORT=str(metrics_port),
        DATA_DIR=str(tmp_path),
        REDIS_URL=redis_url,
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "inventory_service"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: is_serving(f"127.0.0.1:{port}"), timeout_s=15, what="inventory health")
        assert (tmp_path / "inventory.db").exists()
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=15)
    assert process.returncode == 0, output.decode()
    assert b"signal 15: stopping" in output


def test_bad_setting_stops_start_up_naming_the_variable(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "inventory_service"],
        env=_env(INVENTORY_SEED_STOCK="lots", DATA_DIR=str(tmp_path)),
        capture_output=True,
        timeout=15,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.decode().strip() == (
        "inventory: INVENTORY_SEED_STOCK='lots': must be an integer in 0..1000000"
    )
