"""The configs `up` writes, read back by the real supervisord parser and validated by the real
Envoy, without starting anything."""

from __future__ import annotations

import dataclasses
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from supervisor.options import ProcessConfig, ServerOptions

from meshctl import envoy, render
from meshctl.config import StackConfig, StackError
from meshctl.pki import ensure_certificates
from meshctl.registry import (
    BACKENDS,
    CANARY,
    PROGRAMS,
    PROMETHEUS,
    PROMETHEUS_PORT,
    REDIS,
    REDIS_EXPORTER,
    REDIS_EXPORTER_PORT,
    WORKLOADS,
)
from meshctl.testing import stack_config
from meshkit.tls import spiffe_id

#: A directory name that needs care: spaces, quotes, a comma and %.
AWKWARD = 'my mesh\'s "dir", 100%'


def read_as_supervisord(
    config: StackConfig, *, own_redis: bool = False
) -> tuple[Any, dict[str, ProcessConfig]]:
    """supervisord's own reading of the rendered config, with the environment `up` gives it."""
    for directory in (config.run_dir, config.log_dir):
        directory.mkdir(parents=True, exist_ok=True)
    config.supervisor_conf.write_text(render.supervisord_conf(own_redis=own_redis))
    options = ServerOptions()
    options.environ_expansions = {
        f"ENV_{key}": value
        for key, value in render.supervisord_environment(config, own_redis=own_redis).items()
    }
    options.here = str(config.run_dir)
    section = options.read_config(str(config.supervisor_conf))
    programs = {
        process.name: process
        for group in section.process_group_configs
        for process in group.process_configs
    }
    return section, programs


@pytest.mark.parametrize("mtls", [True, False], ids=["mtls", "plaintext"])
def test_rendered_envoy_config_is_valid_for_the_real_envoy(tmp_path: Path, mtls: bool) -> None:
    config = stack_config(tmp_path, "redis://127.0.0.1:6379/0", mtls=mtls)
    config.log_dir.mkdir()
    ensure_certificates(config.certs_dir, WORKLOADS)
    rendered = tmp_path / "envoy.yaml"
    text = render.envoy_yaml(config)
    rendered.write_text(text)
    assert ("transport_socket" in text) is mtls
    assert ("envoy.filters.http.rbac" in text) is mtls
    result = subprocess.run(
        [envoy.binary(), "--mode", "validate", "-c", str(rendered), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"configuration '{rendered}' OK" in result.stdout + result.stderr


def test_each_backend_of_the_registry_is_one_envoy_cluster(tmp_path: Path) -> None:
    config = stack_config(tmp_path / AWKWARD, "redis://127.0.0.1:6379/0")
    rendered = yaml.safe_load(render.envoy_yaml(config))
    clusters = {c["name"]: c for c in rendered["static_resources"]["clusters"]}
    assert list(clusters) == [p.name for p in BACKENDS]
    for program in BACKENDS:
        assert program.backend is not None
        assert program.workload is not None
        cluster = clusters[program.name]
        [endpoint] = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
        assert endpoint["endpoint"]["address"]["socket_address"] == {
            "address": config.backend_host,
            "port_value": config.port(program.backend.port),
        }
        [check] = cluster["health_checks"]
        assert check["grpc_health_check"] == {"service_name": program.backend.health_service}
        tls = cluster["transport_socket"]["typed_config"]["common_tls_context"]
        validation = tls["validation_context"]
        assert validation["match_typed_subject_alt_names"][0]["matcher"] == {
            "exact": spiffe_id(program.workload)
        }
        # Paths reach Envoy as they are: YAML is written by the YAML library, not by hand.
        assert validation["trusted_ca"]["filename"] == f"{config.certs_dir}/ca.pem"


def test_the_canary_split_names_the_registrys_canary_and_the_runtime_prefix(
    tmp_path: Path,
) -> None:
    config = stack_config(tmp_path, "redis://127.0.0.1:6379/0")
    splits = [
        route["weighted_clusters"]
        for route in _routes(yaml.safe_load(render.envoy_yaml(config)))
        if "weighted_clusters" in route
    ]
    assert splits
    for split in splits:
        assert split["runtime_key_prefix"] == envoy.CANARY_RUNTIME_PREFIX
        assert [c["name"] for c in split["clusters"]] == [p.name for p in CANARY]


def test_both_listeners_log_each_request_as_json_with_its_trace_id_and_grpc_status(
    tmp_path: Path,
) -> None:
    config = stack_config(tmp_path / AWKWARD, "redis://127.0.0.1:6379/0")
    rendered = yaml.safe_load(render.envoy_yaml(config))
    listeners = rendered["static_resources"]["listeners"]
    assert sorted(listener["name"] for listener in listeners) == ["edge", "internal"]
    for listener in listeners:
        manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
        [access_log] = manager["access_log"]
        assert access_log["typed_config"]["path"] == str(config.access_log)
        fields = access_log["typed_config"]["log_format"]["json_format"]
        assert fields["service"] == "envoy"
        assert fields["listener"] == "%LISTENER_NAME%"
        assert fields["trace_id"] == "%TRACE_ID%"
        # From the trailers, or from the headers of a trailers-only answer.
        assert fields["grpc_status"] == "%GRPC_STATUS(NUMBER)%"
        assert fields["upstream_cluster"] == "%UPSTREAM_CLUSTER%"
        assert {"timestamp", "method", "path", "response_flags", "duration_ms"} <= fields.keys()


def test_each_canary_cluster_fails_over_to_the_other_deployment(tmp_path: Path) -> None:
    config = stack_config(tmp_path, "redis://127.0.0.1:6379/0")
    rendered = yaml.safe_load(render.envoy_yaml(config))
    clusters = {c["name"]: c for c in rendered["static_resources"]["clusters"]}

    def ports(cluster: dict[str, Any]) -> list[tuple[int, int]]:
        return [
            (group.get("priority", 0), e["endpoint"]["address"]["socket_address"]["port_value"])
            for group in cluster["load_assignment"]["endpoints"]
            for e in group["lb_endpoints"]
        ]

    v1, v2 = (config.port(p.backend.port) for p in CANARY if p.backend is not None)
    first, second = (clusters[p.name] for p in CANARY)
    assert ports(first) == [(0, v1), (1, v2)]
    assert ports(second) == [(0, v2), (1, v1)]
    # Every other backend has its one host only.
    others = [c for name, c in clusters.items() if name not in {p.name for p in CANARY}]
    assert all(len(ports(cluster)) == 1 for cluster in others)
    # A retry (connect failure, refused stream) goes to a priority not yet tried.
    internal_retry = [
        r["retry_policy"]
        for r in _virtual_hosts(rendered)
        if r["name"] == "internal" and "retry_policy" in r
    ]
    assert internal_retry
    assert internal_retry[0]["retry_priority"]["name"] == (
        "envoy.retry_priorities.previous_priorities"
    )


def _virtual_hosts(node: Any) -> list[dict[str, Any]]:
    if isinstance(node, dict):
        found = [node] if "domains" in node else []
        return found + [vh for value in node.values() for vh in _virtual_hosts(value)]
    if isinstance(node, list):
        return [vh for item in node for vh in _virtual_hosts(item)]
    return []


def test_a_route_to_a_cluster_the_registry_lacks_is_refused(tmp_path: Path) -> None:
    config = stack_config(tmp_path, "redis://127.0.0.1:6379/0")
    template = yaml.safe_load(config.envoy_template.read_text())
    listener = template["static_resources"]["listeners"][0]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    manager["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["cluster"] = "shipping"
    root = tmp_path / "checkout"
    (root / "deploy" / "envoy").mkdir(parents=True)
    (root / "deploy" / "envoy" / "envoy.yaml").write_text(yaml.safe_dump(template))
    with pytest.raises(StackError, match="shipping"):
        render.envoy_yaml(dataclasses.replace(config, root=root))


def _routes(node: Any) -> list[dict[str, Any]]:
    if isinstance(node, list):
        return [route for item in node for route in _routes(item)]
    if not isinstance(node, dict):
        return []
    own = [node["route"]] if isinstance(node.get("route"), dict) else []
    return own + [route for value in node.values() for route in _routes(value)]


def test_rendered_supervisord_config_gives_each_payment_deployment_its_own_port(
    tmp_path: Path,
) -> None:
    config = stack_config(tmp_path, "redis://127.0.0.1:6379/0")
    section, programs = read_as_supervisord(config)
    assert set(programs) == {p.name for p in PROGRAMS if p is not REDIS}
    assert set(programs) >= {"inventory", "payment_v1", "payment_v2", "order", "envoy"}
    v2_env = programs["payment_v2"].environment
    assert v2_env["PAYMENT_VERSION"] == "v2"
    assert v2_env["PAYMENT_PORT"] == str(config.ports["PAYMENT_V2_PORT"])
    assert v2_env["PAYMENT_METRICS_PORT"] == str(config.ports["PAYMENT_V2_METRICS_PORT"])
    # What every program sees comes from supervisord's own environment, which they inherit.
    shared = render.supervisord_environment(config, own_redis=False)
    # Service-to-service calls use Envoy's internal listener, never the public edge.
    assert shared["PAYMENT_TARGET"] == f"127.0.0.1:{config.ports['INTERNAL_PORT']}"
    assert shared["INVENTORY_TARGET"] == f"127.0.0.1:{config.ports['INTERNAL_PORT']}"
    assert shared["MESH_MTLS"] == "1"
    assert shared["MESH_CERTS_DIR"] == str(config.certs_dir)
    for process in programs.values():
        assert process.stopasgroup is True
        assert process.killasgroup is True
    assert "--disable-hot-restart" in shlex.split(programs["envoy"].command)
    assert programs["envoy"].directory == str(config.run_dir)
    assert {name: process.priority for name, process in programs.items()} == {
        p.name: p.priority for p in PROGRAMS if p is not REDIS
    }
    assert section.directory == str(config.root)


def test_redis_is_a_program_only_when_the_stack_runs_its_own(tmp_path: Path) -> None:
    config = stack_config(tmp_path, "redis://127.0.0.1:6379/0")
    _, programs = read_as_supervisord(config, own_redis=True)
    redis = shlex.split(programs[REDIS.name].command)
    assert redis[1:] == [
        *("--bind", "127.0.0.1", "--port", "6379", "--save", ""),
        *("--appendonly", "no", "--dir", "."),
    ]
    assert programs[REDIS.name].directory == str(config.run_dir)


def test_paths_and_values_reach_supervisord_unescaped(tmp_path: Path) -> None:
    """Spaces, quotes, commas, newlines and % need no escaping: no value is in the file."""
    base = tmp_path / AWKWARD
    python = base / "venv" / "bin" / "python"
    odd = 'a "quoted", 50% %(here)s\nsecond line'
    config = dataclasses.replace(
        stack_config(base, "redis://127.0.0.1:6379/0", {"INVENTORY_SEED_STOCK": odd}),
        python=str(python),
        root=base,
        # No %: supervisord expands a program's log path twice (see the next test).
        log_dir=tmp_path / 'the mesh\'s "logs", all of them',
    )
    base.mkdir(parents=True)
    text = render.supervisord_conf(own_redis=False)
    assert AWKWARD not in text
    assert odd not in text
    section, programs = read_as_supervisord(config)
    assert shlex.split(programs["order"].command) == [str(python), "-m", "order_service"]
    assert programs["order"].stdout_logfile == str(config.log_path("order"))
    assert section.logfile == str(config.log_path("supervisord"))
    assert section.directory == str(base)
    assert render.supervisord_environment(config, own_redis=False)["INVENTORY_SEED_STOCK"] == odd


def test_telemetry_listens_on_loopback_and_gets_its_paths_and_redis_url_as_one_word(
    tmp_path: Path,
) -> None:
    base = tmp_path / AWKWARD
    url = "redis://127.0.0.1:6390/2"
    config = dataclasses.replace(
        stack_config(base, url),
        host="0.0.0.0",
        # No %: supervisord expands a program's log path twice.
        log_dir=tmp_path / "logs",
    )
    _, programs = read_as_supervisord(config)
    command = shlex.split(programs[PROMETHEUS.name].command)
    assert command[0] == shutil.which("prometheus")

    def flag(name: str) -> str:
        return command[command.index(name) + 1]

    # Prometheus's API has no authentication: loopback only, whatever MESH_HOST says.
    assert flag("--web.listen-address") == f"127.0.0.1:{config.port(PROMETHEUS_PORT)}"
    assert flag("--storage.tsdb.path") == str(config.prometheus_data)
    assert flag("--config.file") == "prometheus.yml"
    assert flag("--enable-feature") == "exemplar-storage"
    assert programs[PROMETHEUS.name].directory == str(config.run_dir)
    exporter = shlex.split(programs[REDIS_EXPORTER.name].command)
    assert exporter[0] == shutil.which("prometheus-redis-exporter")
    assert exporter[1:] == [
        *("-redis.addr", url),
        *("-web.listen-address", f"127.0.0.1:{config.port(REDIS_EXPORTER_PORT)}"),
    ]


def test_a_log_dir_supervisord_would_misread_is_refused_naming_why(tmp_path: Path) -> None:
    config = stack_config(tmp_path / "100%", "redis://127.0.0.1:6379/0")
    with pytest.raises(StackError, match="expands a program's log path twice"):
        render.supervisord_environment(config, own_redis=False)
