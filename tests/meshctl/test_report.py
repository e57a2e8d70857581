"""The banner and the tables: every program of the registry, at this stack's addresses."""

from __future__ import annotations

import re
from pathlib import Path

from meshctl.pidrecord import RecordedProcess
from meshctl.registry import BACKENDS, PROMETHEUS_PORT
from meshctl.report import (
    GRAFANA_URL,
    JAEGER_OTLP_ENDPOINT,
    JAEGER_UI_URL,
    ProgramStatus,
    banner,
    orphan_table,
    status_table,
    tail,
)
from meshctl.testing import stack_config


def test_the_banner_names_every_backend_with_its_ports(tmp_path: Path) -> None:
    config = stack_config(tmp_path, "redis://127.0.0.1:6379/0")
    text = banner(config, own_redis=True)
    for program in BACKENDS:
        assert program.backend is not None
        line = next(line for line in text.splitlines() if program.backend.label in line)
        assert f"127.0.0.1:{config.port(program.backend.port)}" in line
        if program.backend.metrics is not None:
            assert f"127.0.0.1:{config.port(program.backend.metrics)}/metrics" in line
    assert f"grpcurl -plaintext {config.edge_target} list" in text
    assert "started by the stack" in text
    assert f"{config.admin_url}/runtime_modify?routing.payment.payment_v1=50&" in text
    [prometheus] = [line for line in text.splitlines() if line.split()[:1] == ["prometheus"]]
    assert prometheus.split()[1] == f"http://127.0.0.1:{config.port(PROMETHEUS_PORT)}"


def test_the_banner_names_jaeger_and_grafana_as_make_observes(tmp_path: Path) -> None:
    config = stack_config(tmp_path, "redis://127.0.0.1:6379/0", {"OTEL_SDK_DISABLED": "true"})
    lines = banner(config, own_redis=True).splitlines()
    [jaeger] = [line for line in lines if line.split()[:3] == ["jaeger", "(make", "observe)"]]
    [grafana] = [line for line in lines if line.split()[:3] == ["grafana", "(make", "observe)"]]
    assert jaeger.split()[3] == JAEGER_UI_URL
    assert f"OTEL_EXPORTER_OTLP_ENDPOINT={JAEGER_OTLP_ENDPOINT} make up" in jaeger
    assert grafana.split()[3] == GRAFANA_URL
    traced = stack_config(
        tmp_path, "redis://127.0.0.1:6379/0", {"OTEL_EXPORTER_OTLP_ENDPOINT": JAEGER_OTLP_ENDPOINT}
    )
    assert f"traces go to {JAEGER_OTLP_ENDPOINT}" in banner(traced, own_redis=True)


def test_plaintext_is_said_in_the_banner(tmp_path: Path) -> None:
    config = stack_config(tmp_path, "redis://127.0.0.1:6379/0", mtls=False)
    assert re.search(
        r"internal \(service calls\) +127\.0\.0\.1:\d+ +PLAINTEXT", banner(config, own_redis=False)
    )


def test_tables_list_programs_in_start_order() -> None:
    statuses = [
        ProgramStatus("catalog", "RUNNING", 12, "SERVING"),
        ProgramStatus("order", "FATAL", 0, "-"),
    ]
    assert status_table(statuses).splitlines()[1:] == [
        "  catalog        RUNNING        12  SERVING",
        "  order          FATAL           -  -",
    ]
    orphans = [RecordedProcess("order", 40, 1), RecordedProcess("redis", 20, 1)]
    assert [row.split()[0] for row in orphan_table(orphans).splitlines()[1:]] == ["redis", "order"]


def test_tail_keeps_the_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("".join(f"line {n}\n" for n in range(100)))
    assert tail(log, 2) == ["line 98", "line 99"]
    assert tail(tmp_path / "missing.log", 2) == []
