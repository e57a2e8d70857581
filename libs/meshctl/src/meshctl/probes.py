"""How `status` and `up` tell that a program serves: each program's probe in the registry
answers "SERVING", or why not."""

from __future__ import annotations

import http.client
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
import redis

from meshctl.envoy import EnvoyAdmin
from meshkit import tls
from meshkit.health import SERVING, serving_status

if TYPE_CHECKING:
    from meshctl.config import StackConfig
    from meshctl.registry import Port

Probe = Callable[["StackConfig"], str]


def envoy_credentials(config: StackConfig) -> grpc.ChannelCredentials | None:
    """How the launcher reaches a backend: as Envoy, the one peer backends answer (the
    launcher issued Envoy's certificate, so it holds no power Envoy's operator lacks)."""
    if not config.mtls:
        return None
    return tls.WorkloadTls.load(config.certs_dir, tls.ENVOY).channel_credentials()


@dataclass(frozen=True, slots=True)
class GrpcHealth:
    """The gRPC health check of the server on ``port``, as Envoy when mTLS is on."""

    port: Port
    service: str

    def __call__(self, config: StackConfig) -> str:
        target = f"{config.backend_host}:{config.port(self.port)}"
        return serving_status(target, self.service, credentials=envoy_credentials(config))


@dataclass(frozen=True, slots=True)
class EnvoyReady:
    """SERVING when Envoy sees each of ``clusters`` healthy and a health call through the edge
    (routed to the order service) passes."""

    clusters: tuple[str, ...]

    def __call__(self, config: StackConfig) -> str:
        try:
            flags = EnvoyAdmin(config.admin_url).cluster_health()
        except OSError as error:
            return f"admin unreachable ({error})"
        unhealthy = [f"{name}={state}" for name, state in flags.items() if state != "healthy"]
        missing = [f"{name}=absent" for name in self.clusters if name not in flags]
        if unhealthy or missing:
            return "clusters not healthy: " + ", ".join(unhealthy + missing)
        # The load balancer takes a host's first passed check a moment after /clusters shows it
        # (measured: for about a second a payment cluster still sent its share to its failover
        # host): a second round of passed checks, one interval later, is the sign it has.
        admin = EnvoyAdmin(config.admin_url)
        passed, hosts = admin.health_checks_passed(), admin.hosts_per_cluster()
        unsettled = [name for name in self.clusters if passed.get(name, 0) < 2 * hosts[name]]
        if unsettled:
            return "clusters not settled (one round of health checks so far): " + ", ".join(
                unsettled
            )
        edge = serving_status(config.edge_target)
        return SERVING if edge == SERVING else f"edge health call: {edge}"


@dataclass(frozen=True, slots=True)
class HttpOk:
    """SERVING when ``GET http://127.0.0.1:<port><path>`` answers 200 (Prometheus's
    ``/-/ready``, an exporter's ``/metrics``)."""

    port: Port
    path: str

    def __call__(self, config: StackConfig) -> str:
        connection = http.client.HTTPConnection("127.0.0.1", config.port(self.port), timeout=1.0)
        try:
            connection.request("GET", self.path)
            response = connection.getresponse()
            response.read()
        except (OSError, http.client.HTTPException) as error:
            return f"unreachable ({error})"
        finally:
            connection.close()
        return SERVING if response.status == 200 else f"GET {self.path}: HTTP {response.status}"


def redis_up(config: StackConfig) -> str:
    return SERVING if redis_answers(config.redis_url) else "not answering"


def record_written(config: StackConfig) -> str:
    return SERVING if config.pid_record.is_file() else "no pid record written"


def redis_answers(url: str) -> bool:
    """True when something speaks Redis at ``url`` (an auth error still means it is there)."""
    client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
    try:
        client.ping()
    except (redis.ConnectionError, redis.TimeoutError):
        return False
    except redis.RedisError:
        return True
    finally:
        client.close()
    return True


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True
