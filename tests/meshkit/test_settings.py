"""Settings errors name the variable and the allowed range."""

from __future__ import annotations

import re

import pytest

from meshkit.settings import SettingsError, env_float, env_int, env_port, redis_url


def test_defaults_when_unset_or_empty() -> None:
    assert env_int("X", 7, lo=0, hi=10, env={}) == 7
    assert env_int("X", 7, lo=0, hi=10, env={"X": ""}) == 7
    assert env_float("X", 0.5, lo=0, hi=1, env={"X": "0.25"}) == 0.25


@pytest.mark.parametrize(
    ("raw", "message"),
    [("abc", "X='abc': must be an integer in 0..10"), ("11", "X=11: must be in 0..10")],
)
def test_bad_int_names_variable_and_range(raw: str, message: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(message)):
        env_int("X", 0, lo=0, hi=10, env={"X": raw})


def test_port_range() -> None:
    with pytest.raises(SettingsError, match=r"0\.\.65535"):
        env_port("ORDER_PORT", 50051, env={"ORDER_PORT": "70000"})


def test_redis_url_scheme() -> None:
    with pytest.raises(SettingsError, match="REDIS_URL"):
        redis_url({"REDIS_URL": "http://x"})
