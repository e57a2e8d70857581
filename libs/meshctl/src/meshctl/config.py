"""Where a stack lives and what it listens on: from the environment for `make up`, or built by
tests on free ports in a temp dir (meshctl.testing)."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshctl.pidrecord import RECORD_FILE
from meshctl.registry import ADMIN_PORT, EDGE_PORT, INTERNAL_PORT, PORTS, PROMETHEUS_PORT, Port
from meshkit import settings, tls, tracing
from meshkit.settings import DEFAULT_HOST, DEFAULT_REDIS_URL, SettingsError

#: The checkout this package is installed from (editable, by `make setup`): deploy/ and var/
#: belong to the checkout, so they are found from here, never from the working directory.
REPO_ROOT = Path(__file__).resolve().parents[4]
DEFAULT_STARTUP_TIMEOUT_S = 60.0


VAR_DIR = settings.text(
    "MESH_VAR_DIR", "var", doc="run, log, certs and data directories (relative to the checkout)"
)
#: The launcher's own variables; each port's is in the registry (PORTS).
VARIABLES: tuple[settings.Var[Any], ...] = (
    VAR_DIR,
    settings.DATA_DIR,
    settings.HOST,
    settings.REDIS_URL,
    tls.MTLS,
    *(port.setting for port in PORTS),
)


class StackError(RuntimeError):
    """The stack could not be started or stopped; the message says what to look at."""


def default_ports() -> dict[str, int]:
    return {port.var: port.default for port in PORTS}


@dataclass(frozen=True, slots=True, kw_only=True)
class StackConfig:
    """Where the stack lives and listens. Every port must be fixed (non-zero) and distinct,
    because Envoy's config and the services' targets are written before anything starts."""

    run_dir: Path
    log_dir: Path
    data_dir: Path
    #: The mesh CA and each workload's certificate (created by `up` when missing).
    certs_dir: Path
    root: Path = REPO_ROOT
    #: Every port of the registry, by its environment variable.
    ports: Mapping[str, int] = field(default_factory=default_ports)
    #: mTLS on every hop behind the edge, and RBAC on the internal listener (MESH_MTLS).
    mtls: bool = True
    host: str = DEFAULT_HOST
    redis_url: str = DEFAULT_REDIS_URL
    python: str = sys.executable
    startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S
    #: Extra environment for every program (e.g. INVENTORY_SEED_STOCK, PAYMENT_FAULT_RATE).
    env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        wanted = [port.var for port in PORTS]
        if sorted(self.ports) != sorted(wanted):
            raise SettingsError(f"ports must set exactly {', '.join(wanted)}")
        for var in wanted:
            if not 1 <= self.ports[var] <= 65535:
                raise SettingsError(f"{var}={self.ports[var]}: must be in 1..65535")
        seen: dict[int, str] = {}
        for var in wanted:
            number = self.ports[var]
            if number in seen:
                raise SettingsError(f"{var}={number}: already used by {seen[number]}")
            seen[number] = var
        if not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise SettingsError(f"REDIS_URL={self.redis_url!r}: must start with redis://")
        if self.startup_timeout_s <= 0:
            raise SettingsError(f"startup_timeout_s must be > 0, got {self.startup_timeout_s}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ, root: Path = REPO_ROOT) -> StackConfig:
        """The defaults, each port overridable by its variable (see registry.PORTS);
        MESH_VAR_DIR (default ``var``) holds run/, log/, data/ and certs/ (DATA_DIR overrides
        data/)."""
        root = root.resolve()
        var = Path(VAR_DIR.read(env))
        var = var if var.is_absolute() else root / var
        # Unlike a service, the launcher keeps data under MESH_VAR_DIR unless told otherwise.
        data = settings.DATA_DIR.read(env) if env.get(settings.DATA_DIR.name) else var / "data"
        return cls(
            root=root,
            run_dir=var / "run",
            log_dir=var / "log",
            data_dir=data,
            certs_dir=var / "certs",
            ports={port.var: port.setting.read(env) for port in PORTS},
            mtls=tls.MTLS.read(env),
            host=settings.HOST.read(env),
            redis_url=settings.REDIS_URL.read(env),
        )

    def port(self, port: Port) -> int:
        return self.ports[port.var]

    @property
    def backend_host(self) -> str:
        """Where Envoy and the health probes reach the services (MESH_HOST, or loopback when
        the services listen on every interface)."""
        return "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host

    @property
    def edge_target(self) -> str:
        return f"127.0.0.1:{self.port(EDGE_PORT)}"

    @property
    def internal_target(self) -> str:
        """Where the services call each other: Envoy's internal (sidecar) listener."""
        return f"127.0.0.1:{self.port(INTERNAL_PORT)}"

    @property
    def traces_endpoint(self) -> str | None:
        """Where the programs export traces, as they will see it: supervisord passes the
        launcher's environment on, with ``env`` on top; None when tracing is off."""
        return tracing.endpoint({**os.environ, **self.env})

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.port(ADMIN_PORT)}"

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.port(PROMETHEUS_PORT)}"

    # -- files -------------------------------------------------------------------------------
    @property
    def envoy_template(self) -> Path:
        """Envoy's listeners, routes, RBAC and cluster template, as users read them."""
        return self.root / "deploy" / "envoy" / "envoy.yaml"

    @property
    def rules_dir(self) -> Path:
        """Prometheus's recording and alerting rules (``*_rules.yml``) and their unit tests."""
        return self.root / "deploy" / "prometheus"

    @property
    def prometheus_conf(self) -> Path:
        return self.run_dir / "prometheus.yml"

    @property
    def prometheus_data(self) -> Path:
        return self.data_dir / "prometheus"

    @property
    def supervisor_conf(self) -> Path:
        return self.run_dir / "supervisord.conf"

    @property
    def envoy_conf(self) -> Path:
        return self.run_dir / "envoy.yaml"

    @property
    def faults_dir(self) -> Path:
        """The servers' live fault files (meshkit.faults); emptied at every `up`."""
        return self.run_dir / "faults"

    @property
    def pid_record(self) -> Path:
        """Every pid the stack started (see meshctl.pidrecord); outlives supervisord."""
        return self.run_dir / RECORD_FILE

    @property
    def access_log(self) -> Path:
        """Envoy writes it itself (cheaper than piping every request line through supervisord)."""
        return self.log_dir / "envoy-access.log"

    def log_path(self, program: str) -> Path:
        return self.log_dir / f"{program}.log"
