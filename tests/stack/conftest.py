"""The whole mesh, started once per session the way `make up` starts it: meshkit.stack.Stack
on free ports in a temp dir, with a private redis-server and the real Envoy binary."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import grpc
import pytest

from meshkit.stack import PORT_VARS, Stack, StackConfig, find_root, pid_alive
from meshkit.testing import free_port, redis_server


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports that were free a moment ago."""
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


def stack_config(base: Path, redis_url: str, env: Mapping[str, str] | None = None) -> StackConfig:
    """A StackConfig like `make up`'s, but on free ports with everything under ``base``."""
    ports = dict(zip(PORT_VARS, free_ports(len(PORT_VARS)), strict=True))
    return StackConfig(
        root=find_root(Path(__file__)),
        run_dir=base / "run",
        log_dir=base / "log",
        data_dir=base / "data",
        redis_url=redis_url,
        env=dict(env or {}),
        **ports,
    )


def assert_all_gone(pids: Mapping[str, int]) -> None:
    left = {name: pid for name, pid in pids.items() if pid_alive(pid)}
    assert not left, f"processes left behind after down(): {left}"


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The running mesh; torn down at the end of the session, checking nothing is left."""
    with redis_server() as redis:
        running = Stack(stack_config(tmp_path_factory.mktemp("stack"), redis.url))
        try:
            running.up()
            yield running
        finally:
            pids = running.pids() if running.is_running() else {}
            running.down()
            assert_all_gone(pids)


@pytest.fixture(scope="session")
def edge(stack: Stack) -> Iterator[grpc.Channel]:
    """One channel to the Envoy edge, as a user's client would hold it."""
    with grpc.insecure_channel(stack.config.edge_target) as channel:
        yield channel
