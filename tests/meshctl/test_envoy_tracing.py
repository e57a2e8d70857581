"""Envoy's tracer is in its rendered config exactly when the services export traces, and the
real Envoy accepts that config."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshctl import envoy, envoy_tracing, render
from meshctl.config import StackError
from meshctl.pki import ensure_certificates
from meshctl.registry import WORKLOADS
from meshctl.testing import stack_config
from meshkit.tracing import TRACE_ID_HEADER

ENDPOINT = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}


def _managers(rendered: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        f["typed_config"]
        for listener in rendered["static_resources"]["listeners"]
        for chain in listener["filter_chains"]
        for f in chain["filters"]
    ]


@pytest.mark.parametrize("mtls", [True, False], ids=["mtls", "plaintext"])
def test_with_an_endpoint_both_listeners_trace_and_envoy_accepts_it(
    tmp_path: Path, mtls: bool
) -> None:
    config = stack_config(tmp_path, "redis://127.0.0.1:6379/0", ENDPOINT, mtls=mtls)
    config.log_dir.mkdir()
    ensure_certificates(config.certs_dir, WORKLOADS)
    text = render.envoy_yaml(config)
    rendered = yaml.safe_load(text)
    managers = _managers(rendered)
    assert len(managers) == 2  # edge and internal
    for manager in managers:
        assert "spawn_upstream_span" not in manager["tracing"]  # the SERVER span is the hop
        # Only the edge answers with the trace id: nobody reads the internal hops' answers.
        added = manager["route_config"].get("response_headers_to_add", [])
        names = [entry["header"]["key"] for entry in added]
        assert names == ([TRACE_ID_HEADER] if manager["stat_prefix"] == "edge" else [])
        assert manager["tracing"]["random_sampling"] == {"value": 100.0}
        provider = manager["tracing"]["provider"]
        assert provider["name"] == "envoy.tracers.opentelemetry"
        cluster_name = provider["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"]
        assert cluster_name == envoy_tracing.CLUSTER
    (collector,) = [
        c for c in rendered["static_resources"]["clusters"] if c["name"] == envoy_tracing.CLUSTER
    ]
    [endpoint] = collector["load_assignment"]["endpoints"][0]["lb_endpoints"]
    address = endpoint["endpoint"]["address"]["socket_address"]
    assert address == {"address": "127.0.0.1", "port_value": 4317}
    (static,) = [
        layer for layer in rendered["layered_runtime"]["layers"] if "static_layer" in layer
    ]
    assert static["static_layer"] == envoy_tracing.RUNTIME
    path = tmp_path / "envoy.yaml"
    path.write_text(text)
    result = subprocess.run(
        [envoy.binary(), "--mode", "validate", "-c", str(path), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_without_an_endpoint_envoy_does_not_trace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    config = stack_config(tmp_path, "redis://127.0.0.1:6379/0")
    assert config.traces_endpoint is None
    rendered = yaml.safe_load(render.envoy_yaml(config))
    assert all("tracing" not in manager for manager in _managers(rendered))
    names = {c["name"] for c in rendered["static_resources"]["clusters"]}
    assert envoy_tracing.CLUSTER not in names


def test_an_endpoint_envoy_cannot_export_to_is_refused_naming_the_variable(
    tmp_path: Path,
) -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317"}
    config = stack_config(tmp_path, "redis://127.0.0.1:6379/0", env)
    with pytest.raises(StackError, match="OTEL_EXPORTER_OTLP_ENDPOINT"):
        render.envoy_yaml(config)


@pytest.mark.parametrize(
    ("env", "percent"),
    [
        ({}, 100.0),
        ({"OTEL_TRACES_SAMPLER": "parentbased_always_on"}, 100.0),
        ({"OTEL_TRACES_SAMPLER": "always_off"}, 0.0),
        (
            {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"},
            10.0,
        ),
        ({"OTEL_TRACES_SAMPLER": "traceidratio"}, 100.0),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "lots"}, 100.0),
        ({"OTEL_TRACES_SAMPLER": "no-such-sampler"}, 100.0),
    ],
)
def test_the_edge_samples_new_traces_as_the_services_sampler_says(
    env: dict[str, str], percent: float
) -> None:
    assert envoy_tracing.sampling_percent(env) == percent


def test_a_ratio_sampler_reaches_both_listeners(tmp_path: Path) -> None:
    ratio = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"}
    config = stack_config(tmp_path, "redis://127.0.0.1:6379/0", {**ENDPOINT, **ratio})
    config.log_dir.mkdir()
    ensure_certificates(config.certs_dir, WORKLOADS)
    managers = _managers(yaml.safe_load(render.envoy_yaml(config)))
    assert [m["tracing"]["random_sampling"] for m in managers] == [{"value": 25.0}] * 2
