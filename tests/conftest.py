"""Fixtures shared by every test: a private redis-server and the mesh's certificates."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from meshctl.pki import ensure_certificates
from meshctl.registry import WORKLOADS
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


@pytest.fixture(scope="session")
def mesh_certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A mesh CA and a certificate for every workload, as `make up` creates them."""
    directory = tmp_path_factory.mktemp("certs")
    ensure_certificates(directory, WORKLOADS)
    return directory
