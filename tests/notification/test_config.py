"""Settings from the environment: defaults, bounds, and the consumers' names."""

from __future__ import annotations

import pytest

from meshkit.settings import SettingsError
from notification_service.config import Settings


def _env(**values: str) -> dict[str, str]:
    return {"MESH_MTLS": "0", "DATA_DIR": "var/data", **values}


def test_defaults() -> None:
    settings = Settings.from_env(_env())
    assert (settings.port, settings.metrics_port) == (50055, 9105)
    assert (settings.consumers, settings.max_deliveries) == (2, 5)
    assert settings.tls is None


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("NOTIFICATION_CONSUMERS", "0"),
        ("NOTIFICATION_MAX_DELIVERIES", "x"),
        ("NOTIFICATION_CLAIM_IDLE_MS", "0"),
        ("NOTIFICATION_CONSUMER_PREFIX", "no spaces"),
    ],
)
def test_a_bad_value_names_its_variable(var: str, value: str) -> None:
    with pytest.raises(SettingsError, match=var):
        Settings.from_env(_env(**{var: value}))


def test_consumer_names_are_the_prefix_and_an_index_so_a_restart_reuses_them() -> None:
    settings = Settings.from_env(
        _env(NOTIFICATION_CONSUMERS="3", NOTIFICATION_CONSUMER_PREFIX="box-1")
    )
    assert settings.consumer_names() == ("box-1-0", "box-1-1", "box-1-2")
    assert Settings.from_env(_env()).consumer_names()[0].endswith("-0")
