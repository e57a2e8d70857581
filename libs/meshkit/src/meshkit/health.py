"""Health that reflects dependencies: a background probe sets the stock HealthServicer; and
one health call to a server, for whoever waits for one (tests, the launcher)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

_log = logging.getLogger(__name__)

#: A dependency check: returns normally when the dependency works, raises when it does not.
Check = Callable[[], None]

DEFAULT_PROBE_INTERVAL_S = 1.0
SERVING = "SERVING"


class DependencyHealth:
    """Runs named checks every ``interval_s`` and publishes SERVING only when all pass.

    The overall status ("") and each listed service name move together: a service
    that cannot reach its database cannot serve any of its methods.
    """

    def __init__(
        self,
        servicer: health.HealthServicer,
        service_names: Sequence[str],
        checks: Mapping[str, Check],
        *,
        interval_s: float = DEFAULT_PROBE_INTERVAL_S,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self._servicer = servicer
        self._names = ("", *service_names)
        self._checks = dict(checks)
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_failures: dict[str, str] = {}

    def probe_once(self) -> dict[str, str]:
        """Runs every check; returns the failing ones with their error, and publishes the status."""
        failures: dict[str, str] = {}
        for name, check in self._checks.items():
            try:
                check()
            except Exception as error:  # any failure of a dependency means not serving
                failures[name] = f"{type(error).__name__}: {error}"
        if failures != self._last_failures:
            if failures:
                _log.warning("NOT_SERVING: %s", failures)
            else:
                _log.info("SERVING: all dependencies healthy")
            self._last_failures = failures
        status = (
            health_pb2.HealthCheckResponse.NOT_SERVING
            if failures
            else health_pb2.HealthCheckResponse.SERVING
        )
        for name in self._names:
            self._servicer.set(name, status)
        return failures

    def start(self) -> None:
        self.probe_once()
        self._thread = threading.Thread(target=self._run, name="health-probe", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.probe_once()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._interval_s * 2)


def serving_status(
    target: str,
    service: str = "",
    timeout_s: float = 1.0,
    *,
    credentials: grpc.ChannelCredentials | None = None,
) -> str:
    """One gRPC health check: "SERVING", the status name, or why it could not be asked."""
    channel = (
        grpc.insecure_channel(target)
        if credentials is None
        # Backends may listen on MESH_HOST; every certificate of the mesh names localhost.
        else grpc.secure_channel(
            target, credentials, options=[("grpc.ssl_target_name_override", "localhost")]
        )
    )
    with channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.RpcError as error:
            code = error.code() if isinstance(error, grpc.Call) else None
            return f"unreachable ({code.name if code else error})"
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))
