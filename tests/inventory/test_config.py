"""Settings from the environment: defaults, overrides, and errors that name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from inventory_service.config import Settings
from meshkit.settings import SettingsError

PLAINTEXT = {"MESH_MTLS": "0"}


def test_defaults(mesh_certs: Path) -> None:
    settings = Settings.from_env({"MESH_CERTS_DIR": str(mesh_certs)})
    assert (settings.host, settings.port, settings.metrics_port) == ("127.0.0.1", 50052, 9102)
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.seed_stock == 100
    assert settings.db_path == Path("var/data").resolve() / "inventory.db"
    assert settings.tls is not None
    assert settings.tls.identity == "spiffe://mesh.local/inventory"


def test_overrides(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            **PLAINTEXT,
            "MESH_HOST": "0.0.0.0",
            "INVENTORY_PORT": "6000",
            "INVENTORY_METRICS_PORT": "6001",
            "DATA_DIR": str(tmp_path),
            "REDIS_URL": "redis://127.0.0.1:7000/1",
            "INVENTORY_SEED_STOCK": "10",
            "INVENTORY_CACHE_TTL_S": "5",
            "INVENTORY_CACHE_NEGATIVE_TTL_S": "0.5",
            "INVENTORY_CACHE_REDIS_TIMEOUT_MS": "20",
        }
    )
    assert (settings.host, settings.port, settings.metrics_port) == ("0.0.0.0", 6000, 6001)
    assert settings.db_path == tmp_path / "inventory.db"
    assert (settings.redis_url, settings.seed_stock, settings.cache_ttl_s) == (
        "redis://127.0.0.1:7000/1",
        10,
        5,
    )
    assert (settings.cache_negative_ttl_s, settings.cache_redis_timeout_ms) == (0.5, 20)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("INVENTORY_PORT", "70000"),
        ("INVENTORY_METRICS_PORT", "x"),
        ("INVENTORY_SEED_STOCK", "-1"),
        ("INVENTORY_CACHE_TTL_S", "0"),
        ("INVENTORY_CACHE_NEGATIVE_TTL_S", "0"),
        ("INVENTORY_CACHE_REDIS_TIMEOUT_MS", "0"),
        ("REDIS_URL", "http://127.0.0.1"),
    ],
)
def test_bad_value_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({**PLAINTEXT, name: value})


def test_constructor_validates(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="INVENTORY_SEED_STOCK=-5"):
        Settings(data_dir=tmp_path, seed_stock=-5)
    with pytest.raises(SettingsError, match="INVENTORY_CACHE_TTL_S=0"):
        Settings(data_dir=tmp_path, cache_ttl_s=0)
