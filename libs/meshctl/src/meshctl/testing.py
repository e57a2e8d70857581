"""Whole stacks for tests and benchmarks: started the way ``make up`` starts them, on free
ports in a directory of the caller's, with a private redis-server."""

from __future__ import annotations

import contextlib
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TextIO

from prometheus_client.parser import text_string_to_metric_families

from meshctl.config import StackConfig
from meshctl.pidrecord import pid_alive
from meshctl.registry import PORTS
from meshctl.stack import Stack
from meshkit.testing import free_ports, redis_server


def stack_config(
    base: Path, redis_url: str, env: Mapping[str, str] | None = None, *, mtls: bool = True
) -> StackConfig:
    """A StackConfig like ``make up``'s, but on free ports with everything under ``base``."""
    return StackConfig(
        run_dir=base / "run",
        log_dir=base / "log",
        data_dir=base / "data",
        certs_dir=base / "certs",
        ports=dict(zip((port.var for port in PORTS), free_ports(len(PORTS)), strict=True)),
        mtls=mtls,
        redis_url=redis_url,
        env=dict(env or {}),
    )


def assert_all_gone(pids: Mapping[str, int]) -> None:
    left = {name: pid for name, pid in pids.items() if pid_alive(pid)}
    assert not left, f"processes left behind after down(): {left}"


@contextlib.contextmanager
def running_stack(
    base: Path,
    env: Mapping[str, str] | None = None,
    *,
    mtls: bool = True,
    out: TextIO | None = None,
) -> Iterator[Stack]:
    """The whole mesh, started the way ``make up`` starts it, on free ports with a private
    redis-server; stopped afterwards, failing if any of its processes is left behind."""
    with redis_server() as redis_proc:
        running = Stack(stack_config(base, redis_proc.url, env, mtls=mtls), out=out)
        try:
            running.up()
            yield running
        finally:
            pids = running.supervisor.pids() if running.supervisor.is_running() else {}
            running.down()
            assert_all_gone(pids)


def scrape(port: int) -> str:
    """The /metrics page a process of a stack serves on ``port`` (127.0.0.1)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body: bytes = response.read()
    return body.decode()


def metric_sum(port: int, name: str, **labels: str) -> float:
    """The sum of every sample called ``name`` on ``port``'s /metrics whose labels include
    ``labels``."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(scrape(port))
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )
