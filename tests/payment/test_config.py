from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from meshkit.settings import SettingsError
from payment_service.config import FAULT_CODES, Settings

PLAINTEXT = {"MESH_MTLS": "0"}


def test_defaults_match_the_documented_ports(mesh_certs: Path) -> None:
    settings = Settings.from_env({"MESH_CERTS_DIR": str(mesh_certs)})
    assert settings.host == "127.0.0.1"
    assert (settings.port, settings.metrics_port) == (50053, 9103)
    assert settings.version == "v1"
    assert settings.data_dir == Path("var/data").resolve()
    assert settings.db_path == Path("var/data/payment.db").resolve()
    assert (settings.fault_rate, settings.fault_code, settings.latency_ms) == (
        0.0,
        grpc.StatusCode.UNAVAILABLE,
        0,
    )
    # v1 and v2 are two deployments of one workload: one identity.
    assert settings.tls is not None
    assert settings.tls.identity == "spiffe://mesh.local/payment"


def test_every_variable_is_read(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            **PLAINTEXT,
            "MESH_HOST": "0.0.0.0",
            "PAYMENT_PORT": "50054",
            "PAYMENT_METRICS_PORT": "9104",
            "PAYMENT_VERSION": "v2",
            "DATA_DIR": str(tmp_path),
            "PAYMENT_FAULT_RATE": "0.25",
            "PAYMENT_FAULT_CODE": "resource_exhausted",
            "PAYMENT_LATENCY_MS": "150",
        }
    )
    assert settings == Settings(
        host="0.0.0.0",
        port=50054,
        metrics_port=9104,
        version="v2",
        data_dir=tmp_path,
        fault_rate=0.25,
        fault_code=grpc.StatusCode.RESOURCE_EXHAUSTED,
        latency_ms=150,
    )


@pytest.mark.parametrize(
    ("var", "value", "expected"),
    [
        ("PAYMENT_VERSION", "v3", "must be one of v1, v2"),
        ("PAYMENT_FAULT_RATE", "1.5", "must be a number in 0.0..1.0"),
        ("PAYMENT_FAULT_RATE", "-0.1", "must be a number in 0.0..1.0"),
        ("PAYMENT_FAULT_RATE", "often", "must be a number"),
        ("PAYMENT_FAULT_CODE", "OK", "must be one of"),
        ("PAYMENT_FAULT_CODE", "TEAPOT", "must be one of"),
        ("PAYMENT_LATENCY_MS", "60001", "must be an integer in 0..60000"),
        ("PAYMENT_LATENCY_MS", "-1", "must be an integer in 0..60000"),
        ("PAYMENT_PORT", "70000", "must be an integer in 0..65535"),
        ("PAYMENT_METRICS_PORT", "x", "must be an integer"),
    ],
)
def test_bad_values_stop_start_up_naming_the_variable(var: str, value: str, expected: str) -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({**PLAINTEXT, var: value})
    assert str(raised.value).startswith(f"{var}=")
    assert expected in str(raised.value)


def test_a_bad_fault_code_lists_every_allowed_code() -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({**PLAINTEXT, "PAYMENT_FAULT_CODE": "TEAPOT"})
    assert all(code in str(raised.value) for code in FAULT_CODES)
    assert "UNAVAILABLE" in FAULT_CODES
    assert "OK" not in FAULT_CODES


def test_settings_built_in_code_are_validated_too(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="PAYMENT_FAULT_CODE"):
        Settings(data_dir=tmp_path, fault_code=grpc.StatusCode.OK)
    with pytest.raises(SettingsError, match="PAYMENT_VERSION"):
        Settings(data_dir=tmp_path, version="canary")
