"""The launcher's settings and rendered configs, without starting anything."""

from __future__ import annotations

import configparser
import subprocess
from pathlib import Path

import pytest

from meshctl.pki import ensure_certificates
from meshkit.settings import SettingsError
from meshkit.stack import PORT_VARS, WORKLOADS, Stack, StackConfig, envoy_binary, find_root
from meshkit.testing import stack_config


def test_defaults_are_the_briefs_ports(tmp_path: Path) -> None:
    config = StackConfig.from_env({"DATA_DIR": str(tmp_path)})
    assert config.ports() == {
        "EDGE_PORT": 8080,
        "INTERNAL_PORT": 8081,
        "ENVOY_ADMIN_PORT": 9901,
        "CATALOG_PORT": 50050,
        "ORDER_PORT": 50051,
        "INVENTORY_PORT": 50052,
        "PAYMENT_V1_PORT": 50053,
        "PAYMENT_V2_PORT": 50054,
        "ORDER_METRICS_PORT": 9101,
        "INVENTORY_METRICS_PORT": 9102,
        "PAYMENT_V1_METRICS_PORT": 9103,
        "PAYMENT_V2_METRICS_PORT": 9104,
    }
    assert config.redis_url == "redis://127.0.0.1:6379/0"
    assert config.run_dir == find_root() / "var" / "run"
    assert config.log_dir == find_root() / "var" / "log"
    assert config.data_dir == tmp_path
    assert config.certs_dir == find_root() / "var" / "certs"
    assert config.mtls


def test_mesh_mtls_zero_turns_mtls_off() -> None:
    assert not StackConfig.from_env({"MESH_MTLS": "0"}).mtls
    with pytest.raises(SettingsError, match="MESH_MTLS='sometimes'"):
        StackConfig.from_env({"MESH_MTLS": "sometimes"})


def test_every_port_is_overridable_by_its_variable() -> None:
    env = {var: str(20000 + i) for i, (var, _) in enumerate(PORT_VARS.values())}
    assert StackConfig.from_env(env).ports() == {var: int(port) for var, port in env.items()}


def test_a_port_used_twice_is_rejected_naming_both_variables() -> None:
    with pytest.raises(SettingsError, match="ORDER_PORT=8080: already used by EDGE_PORT"):
        StackConfig.from_env({"ORDER_PORT": "8080"})


def test_port_zero_is_rejected_because_envoy_needs_fixed_ports() -> None:
    with pytest.raises(SettingsError, match=r"EDGE_PORT=0: must be in 1\.\.65535"):
        StackConfig.from_env({"EDGE_PORT": "0"})


@pytest.mark.parametrize("mtls", [True, False], ids=["mtls", "plaintext"])
def test_rendered_envoy_config_is_valid_for_the_real_envoy(tmp_path: Path, mtls: bool) -> None:
    config = stack_config(tmp_path, "redis://127.0.0.1:6379/0", mtls=mtls)
    config.log_dir.mkdir()
    ensure_certificates(config.certs_dir, WORKLOADS)
    rendered = tmp_path / "envoy.yaml"
    text = Stack(config).envoy_yaml()
    rendered.write_text(text)
    assert ("transport_socket" in text) is mtls
    assert ("envoy.filters.http.rbac" in text) is mtls
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(rendered), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"configuration '{rendered}' OK" in result.stdout + result.stderr


def test_rendered_supervisord_config_gives_each_payment_deployment_its_own_port(
    tmp_path: Path,
) -> None:
    config = stack_config(tmp_path, "redis://127.0.0.1:6379/0")
    parser = configparser.RawConfigParser()
    parser.read_string(Stack(config).supervisord_conf())
    programs = {s.removeprefix("program:") for s in parser.sections() if s.startswith("program:")}
    assert programs == {"catalog", "inventory", "payment_v1", "payment_v2", "order", "envoy"}
    v2_env = parser.get("program:payment_v2", "environment")
    assert 'PAYMENT_VERSION="v2"' in v2_env
    assert f'PAYMENT_PORT="{config.payment_v2_port}"' in v2_env
    shared = parser.get("supervisord", "environment")
    # Service-to-service calls use Envoy's internal listener, never the public edge.
    assert f'PAYMENT_TARGET="127.0.0.1:{config.internal_port}"' in shared
    assert f'INVENTORY_TARGET="127.0.0.1:{config.internal_port}"' in shared
    assert 'MESH_MTLS="1"' in shared
    assert f'MESH_CERTS_DIR="{config.certs_dir}"' in shared
    for program in programs:
        assert parser.get(f"program:{program}", "stopasgroup") == "true"
        assert parser.get(f"program:{program}", "killasgroup") == "true"
    assert "--disable-hot-restart" in parser.get("program:envoy", "command")
