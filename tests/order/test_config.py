"""Settings from the environment: defaults, overrides, and errors naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshkit.settings import SettingsError
from order_service.config import Settings
from order_service.ratelimit import RateLimitOptions

PLAINTEXT = {"MESH_MTLS": "0"}


def test_defaults(mesh_certs: Path) -> None:
    settings = Settings.from_env({"MESH_CERTS_DIR": str(mesh_certs)})
    assert (settings.port, settings.metrics_port, settings.host) == (50051, 9101, "127.0.0.1")
    # Envoy's internal listener, over mTLS as the order workload.
    assert settings.inventory_target == settings.payment_target == "127.0.0.1:8081"
    assert settings.tls is not None
    assert settings.tls.identity == "spiffe://mesh.local/order"
    assert settings.call_timeout_s == 2.0
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.db_path == Path("var/data").resolve() / "order.db"
    assert settings.rate_limit == RateLimitOptions(per_s=10.0, burst=20)


def test_overrides(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            **PLAINTEXT,
            "ORDER_PORT": "6000",
            "DATA_DIR": str(tmp_path),
            "INVENTORY_TARGET": "127.0.0.1:1",
            "PAYMENT_TARGET": "127.0.0.1:2",
            "ORDER_CALL_TIMEOUT_MS": "500",
            "ORDER_RECOVERY_INTERVAL_S": "1.5",
            "ORDER_RECOVERY_AGE_S": "0",
        }
    )
    assert settings.port == 6000
    assert settings.db_path == tmp_path / "order.db"
    assert (settings.inventory_target, settings.payment_target) == ("127.0.0.1:1", "127.0.0.1:2")
    assert settings.call_timeout_s == 0.5
    assert (settings.recovery_interval_s, settings.recovery_age_s) == (1.5, 0.0)
    assert settings.tls is None


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"ORDER_PORT": "70000"}, "ORDER_PORT"),
        ({"ORDER_CALL_TIMEOUT_MS": "0"}, "ORDER_CALL_TIMEOUT_MS"),
        ({"ORDER_RECOVERY_INTERVAL_S": "soon"}, "ORDER_RECOVERY_INTERVAL_S"),
        ({"REDIS_URL": "http://x"}, "REDIS_URL"),
        ({"PAYMENT_TARGET": "nowhere"}, "PAYMENT_TARGET"),
        ({"ORDER_LEASE_MS": "500"}, "ORDER_LEASE_MS"),
        ({"ORDER_RECOVERY_WORKERS": "0"}, "ORDER_RECOVERY_WORKERS"),
        ({"ORDER_ATTENTION_RUNS": "0"}, "ORDER_ATTENTION_RUNS"),
        ({"MESH_MTLS": "maybe"}, "MESH_MTLS"),
        ({"ORDER_RATE_PER_S": "-1"}, "ORDER_RATE_PER_S"),
        ({"ORDER_RATE_BURST": "0"}, "ORDER_RATE_BURST"),
        # CreateOrder may not take every thread: reads and health need some.
        ({"ORDER_MAX_WORKERS": "8", "ORDER_CREATE_MAX_IN_FLIGHT": "8"}, "must be below"),
    ],
)
def test_bad_values_stop_start_up_naming_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        Settings.from_env({**PLAINTEXT, **env})


def test_mtls_without_certificates_stops_start_up_naming_the_directory(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"MESH_CERTS_DIR=.*cannot read ca\.pem"):
        Settings.from_env({"MESH_CERTS_DIR": str(tmp_path)})
