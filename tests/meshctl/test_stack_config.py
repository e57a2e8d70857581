"""The launcher's settings: defaults, overrides by variable, and what is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshctl.config import REPO_ROOT, StackConfig
from meshctl.registry import PORTS
from meshkit.settings import SettingsError


def test_defaults_are_the_briefs_ports(tmp_path: Path) -> None:
    config = StackConfig.from_env({"DATA_DIR": str(tmp_path)})
    assert config.ports == {
        "EDGE_PORT": 8080,
        "INTERNAL_PORT": 8081,
        "ENVOY_ADMIN_PORT": 9901,
        "ORDER_PORT": 50051,
        "INVENTORY_PORT": 50052,
        "PAYMENT_V1_PORT": 50053,
        "PAYMENT_V2_PORT": 50054,
        "NOTIFICATION_PORT": 50055,
        "ORDER_METRICS_PORT": 9101,
        "INVENTORY_METRICS_PORT": 9102,
        "PAYMENT_V1_METRICS_PORT": 9103,
        "PAYMENT_V2_METRICS_PORT": 9104,
        "NOTIFICATION_METRICS_PORT": 9105,
        "PROMETHEUS_PORT": 9090,
        "REDIS_EXPORTER_PORT": 9121,
    }
    assert config.redis_url == "redis://127.0.0.1:6379/0"
    assert config.run_dir == REPO_ROOT / "var" / "run"
    assert config.log_dir == REPO_ROOT / "var" / "log"
    assert config.data_dir == tmp_path
    assert config.certs_dir == REPO_ROOT / "var" / "certs"
    assert config.mtls


def test_the_checkout_is_found_from_the_package_not_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = StackConfig.from_env({})
    assert config.envoy_template == REPO_ROOT / "deploy" / "envoy" / "envoy.yaml"
    assert config.envoy_template.is_file()
    assert config.run_dir == REPO_ROOT / "var" / "run"


def test_mesh_mtls_zero_turns_mtls_off() -> None:
    assert not StackConfig.from_env({"MESH_MTLS": "0"}).mtls
    with pytest.raises(SettingsError, match="MESH_MTLS='sometimes'"):
        StackConfig.from_env({"MESH_MTLS": "sometimes"})


def test_every_port_is_overridable_by_its_variable() -> None:
    env = {port.var: str(20000 + i) for i, port in enumerate(PORTS)}
    assert StackConfig.from_env(env).ports == {var: int(port) for var, port in env.items()}


def test_a_port_used_twice_is_rejected_naming_both_variables() -> None:
    with pytest.raises(SettingsError, match="ORDER_PORT=8080: already used by EDGE_PORT"):
        StackConfig.from_env({"ORDER_PORT": "8080"})


def test_port_zero_is_rejected_because_envoy_needs_fixed_ports() -> None:
    with pytest.raises(SettingsError, match=r"EDGE_PORT=0: must be an integer in 1\.\.65535"):
        StackConfig.from_env({"EDGE_PORT": "0"})


def test_a_config_must_set_every_port_of_the_registry(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"ports must set exactly .*EDGE_PORT"):
        StackConfig(
            run_dir=tmp_path,
            log_dir=tmp_path,
            data_dir=tmp_path,
            certs_dir=tmp_path,
            ports={"EDGE_PORT": 8080},
        )
