"""Fixtures shared by every test: a private redis-server for the session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from meshkit.testing import RedisServer, redis_server


@pytest.fixture(scope="session")
def redis_proc() -> Iterator[RedisServer]:
    """A real redis-server on a free port, private to this test session."""
    with redis_server() as server:
        yield server


@pytest.fixture
def redis_url(redis_proc: RedisServer) -> Iterator[str]:
    """The private Redis, flushed before each test so tests never see each other's keys."""
    client: redis.Redis = redis_proc.client()
    client.flushall()
    yield redis_proc.url
    client.close()
