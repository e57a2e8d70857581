"""Settings from the environment; errors name the variable and the allowed range."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


class SettingsError(ValueError):
    """A setting is malformed or out of range; start-up stops with this message."""


def env_int(
    name: str, default: int, *, lo: int, hi: int, env: Mapping[str, str] = os.environ
) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: must be an integer in {lo}..{hi}") from None
    if not lo <= value <= hi:
        raise SettingsError(f"{name}={value}: must be in {lo}..{hi}")
    return value


def env_float(
    name: str, default: float, *, lo: float, hi: float, env: Mapping[str, str] = os.environ
) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: must be a number in {lo}..{hi}") from None
    if not lo <= value <= hi:
        raise SettingsError(f"{name}={value}: must be in {lo}..{hi}")
    return value


def env_port(name: str, default: int, *, env: Mapping[str, str] = os.environ) -> int:
    return env_int(name, default, lo=0, hi=65535, env=env)


def env_str(name: str, default: str, *, env: Mapping[str, str] = os.environ) -> str:
    raw = env.get(name)
    return default if raw is None or raw == "" else raw


def data_dir(env: Mapping[str, str] = os.environ) -> Path:
    """Where services keep their databases (git-ignored ``var/data`` by default)."""
    return Path(env_str("DATA_DIR", "var/data", env=env)).resolve()


DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_HOST = "127.0.0.1"


def redis_url(env: Mapping[str, str] = os.environ) -> str:
    url = env_str("REDIS_URL", DEFAULT_REDIS_URL, env=env)
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise SettingsError(f"REDIS_URL={url!r}: must start with redis://, rediss:// or unix://")
    return url
