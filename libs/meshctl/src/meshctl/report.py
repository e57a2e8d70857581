"""What the launcher prints: the banner after `up`, the status and orphan tables, log tails."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from meshctl import dashboards
from meshctl.config import StackConfig
from meshctl.envoy import CANARY_RUNTIME_PREFIX
from meshctl.pidrecord import RecordedProcess
from meshctl.registry import (
    BACKENDS,
    CANARY,
    INVENTORY_SERVICE,
    NOTIFICATION_SERVICE,
    ORDER_SERVICE,
    PROGRAMS,
)
from meshkit.health import SERVING

#: Where `make observe` publishes Jaeger and Grafana (deploy/compose/compose.yaml; a test keeps
#: the two equal). Fixed ports: they are Docker's, not the stack's.
JAEGER_UI_URL = "http://127.0.0.1:16686"
JAEGER_OTLP_ENDPOINT = "http://127.0.0.1:4317"
GRAFANA_URL = "http://127.0.0.1:3000"


@dataclass(frozen=True, slots=True)
class ProgramStatus:
    name: str
    state: str  # supervisor's state name: RUNNING, STARTING, BACKOFF, FATAL, ...
    pid: int
    health: str  # SERVING, or why not

    @property
    def ok(self) -> bool:
        return self.state == "RUNNING" and self.health == SERVING


def start_order(name: str) -> int:
    names = [p.name for p in PROGRAMS]
    return names.index(name) if name in names else len(names)


def status_table(statuses: Sequence[ProgramStatus]) -> str:
    rows = [f"  {'program':<14} {'state':<9} {'pid':>7}  health"]
    rows += [f"  {s.name:<14} {s.state:<9} {s.pid or '-':>7}  {s.health}" for s in statuses]
    return "\n".join(rows)


def orphan_table(processes: Sequence[RecordedProcess]) -> str:
    rows = [f"  {'program':<14} {'state':<9} {'pid':>7}"]
    ordered = sorted(processes, key=lambda p: start_order(p.name))
    rows += [f"  {p.name:<14} {'ORPHANED':<9} {p.pid:>7}" for p in ordered]
    return "\n".join(rows)


def banner(config: StackConfig, *, own_redis: bool) -> str:
    """Where everything listens, and the README's first recipes with this stack's addresses."""
    c = config
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
    security = f"mTLS + RBAC, certs in {c.certs_dir}" if c.mtls else "PLAINTEXT"
    canary = "&".join(
        f"{CANARY_RUNTIME_PREFIX}.{program.name}={weight}"
        for program, weight in zip(CANARY, (50, 50), strict=True)
    )
    endpoint = c.traces_endpoint
    traces = (
        f"traces off: make down && OTEL_EXPORTER_OTLP_ENDPOINT={JAEGER_OTLP_ENDPOINT} make up"
        if endpoint is None
        else f"traces go to {endpoint}"
    )
    boards = ", ".join(dashboards.TITLES)
    lines = [
        "resilient-mesh is up",
        f"  {'edge (gRPC, public API)':<26} {edge}",
        f"  {'internal (service calls)':<26} {c.internal_target}   {security}",
        f"  {'envoy admin':<26} {c.admin_url}",
        f"  {'prometheus':<26} {c.prometheus_url}   rules in {c.rules_dir}",
        f"  {'jaeger (make observe)':<26} {JAEGER_UI_URL}   {traces}",
        f"  {'grafana (make observe)':<26} {GRAFANA_URL}   dashboards {boards}",
    ]
    for program in BACKENDS:
        assert program.backend is not None
        backend = program.backend
        line = f"  {backend.label:<26} 127.0.0.1:{c.port(backend.port)}"
        if backend.metrics is not None:
            line += f"   metrics http://127.0.0.1:{c.port(backend.metrics)}/metrics"
        lines.append(line)
    lines += [
        f"  {'redis':<26} {c.redis_url} ({redis_note})",
        f"  {'logs':<26} {c.log_dir}  (make logs; make status; make down)",
        "",
        "grpcurl:",
        f"  grpcurl -plaintext {edge} list",
        f"  grpcurl -plaintext -d '{{\"page_size\": 5}}' {edge} {INVENTORY_SERVICE}/ListItems",
        f"  grpcurl -plaintext -d '{order}' {edge} {ORDER_SERVICE}/CreateOrder",
        f'  grpcurl -plaintext -d \'{{"customer_id": "alice"}}\' {edge}'
        f" {NOTIFICATION_SERVICE}/ListNotifications",
        "buf curl (npm install @bufbuild/buf):",
        f"  {buf} --list-services http://{edge}",
        f"  {buf} -d '{{\"page_size\": 5}}' http://{edge}/{INVENTORY_SERVICE}/ListItems",
        f"  {buf} -d '{buf_order}' http://{edge}/{ORDER_SERVICE}/CreateOrder",
        "canary (payment v1/v2 weights, live):",
        f"  curl -X POST '{c.admin_url}/runtime_modify?{canary}'",
    ]
    return "\n".join(lines)


def log_excerpt(config: StackConfig, names: Sequence[str], lines: int = 20) -> str:
    """The last ``lines`` of each program's log, each under its path."""
    chunks = []
    for name in names:
        path = config.log_path(name)
        chunks.append(f"==> {path} <==")
        chunks.extend(tail(path, lines) or ["(empty)"])
    return "\n".join(chunks)


def tail(path: Path, lines: int) -> list[str]:
    if not path.is_file():
        return []
    with path.open(encoding="utf-8", errors="replace") as handle:
        return [line.rstrip("\n") for line in deque(handle, maxlen=lines)]
