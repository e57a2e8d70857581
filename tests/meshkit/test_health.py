"""DependencyHealth publishes NOT_SERVING while any dependency check fails."""

from __future__ import annotations

from grpc_health.v1 import health, health_pb2

from meshkit.health import DependencyHealth


def _status(servicer: health.HealthServicer, name: str) -> int:
    return int(servicer._server_status[name])  # the stock servicer keeps no public getter


def test_failing_check_flips_every_name_to_not_serving_and_back() -> None:
    servicer = health.HealthServicer()
    broken = {"now": True}

    def redis_check() -> None:
        if broken["now"]:
            raise ConnectionError("redis down")

    probe = DependencyHealth(servicer, ["svc.A"], {"sqlite": lambda: None, "redis": redis_check})
    failures = probe.probe_once()
    assert failures == {"redis": "ConnectionError: redis down"}
    for name in ("", "svc.A"):
        assert _status(servicer, name) == health_pb2.HealthCheckResponse.NOT_SERVING

    broken["now"] = False
    assert probe.probe_once() == {}
    for name in ("", "svc.A"):
        assert _status(servicer, name) == health_pb2.HealthCheckResponse.SERVING
