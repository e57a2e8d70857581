"""meshkit.redis_client: redis-py imported without OpenTelemetry's metrics SDK, and still working.

Each check runs in a fresh interpreter: what a module import leaves in ``sys.modules`` is only
seen on a process's first import of it.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from meshkit.redis_client import UNUSED_BY_REDIS


def _run(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_redis_is_imported_without_the_metrics_sdk_and_round_trips(redis_url: str) -> None:
    code = f"""
import sys
from meshkit import redis_client
assert {UNUSED_BY_REDIS!r} not in sys.modules, "redis-py loaded the metrics SDK"
client = redis_client.connect({redis_url!r})
client.set("meshkit:redis_client", b"round trip")
print(client.get("meshkit:redis_client").decode())
"""
    assert _run(code) == "round trip"


def test_the_metrics_sdk_is_importable_after_it_for_the_code_that_needs_it() -> None:
    code = f"""
import sys
from meshkit import redis_client
import opentelemetry.sdk.metrics
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
print({UNUSED_BY_REDIS!r} in sys.modules)
"""
    assert _run(code) == "True"


@pytest.mark.parametrize("service", ["order_service", "inventory_service", "notification_service"])
def test_no_service_imports_redis_before_meshkit_redis_client(service: str) -> None:
    code = f"""
import sys
import {service}.__main__
print("redis" in sys.modules, {UNUSED_BY_REDIS!r} in sys.modules)
"""
    assert _run(code) == "True False"
