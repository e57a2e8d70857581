"""Helpers for tests of mesh services: free ports, a throwaway redis-server, health waits."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import redis

from meshkit import stack


def free_port() -> int:
    """A port that was free a moment ago (the kernel picks it; races are rare on loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True, slots=True)
class RedisServer:
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)


@contextlib.contextmanager
def redis_server(port: int | None = None) -> Iterator[RedisServer]:
    """Starts a private ``redis-server`` that keeps nothing on disk, and stops it afterwards."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed: run `make setup`")
    port = port or free_port()
    workdir = tempfile.mkdtemp(prefix="mesh-redis-")
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = RedisServer(port, process)
    try:
        wait_until(lambda: _pings(server), timeout_s=10, what=f"redis-server on {port}")
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def _pings(server: RedisServer) -> bool:
    try:
        return bool(server.client().ping())
    except redis.RedisError:
        return False


def wait_until(
    predicate: Callable[[], object], *, timeout_s: float, what: str, interval_s: float = 0.05
) -> None:
    """Polls ``predicate`` until it returns true; raises TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")


def is_serving(target: str, service: str = "", timeout_s: float = 1.0) -> bool:
    """One gRPC health check; False on any error."""
    return stack.grpc_health(target, service, timeout_s) == "SERVING"


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports that were free a moment ago."""
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


def stack_config(
    base: Path, redis_url: str, env: Mapping[str, str] | None = None, *, mtls: bool = True
) -> stack.StackConfig:
    """A StackConfig like ``make up``'s, but on free ports with everything under ``base``."""
    # Any: mypy cannot tell these keys are exactly StackConfig's int port fields.
    ports: dict[str, Any] = dict(
        zip(stack.PORT_VARS, free_ports(len(stack.PORT_VARS)), strict=True)
    )
    return stack.StackConfig(
        root=stack.find_root(Path(__file__)),
        run_dir=base / "run",
        log_dir=base / "log",
        data_dir=base / "data",
        certs_dir=base / "certs",
        mtls=mtls,
        redis_url=redis_url,
        env=dict(env or {}),
        **ports,
    )


@contextlib.contextmanager
def running_stack(
    base: Path,
    env: Mapping[str, str] | None = None,
    *,
    mtls: bool = True,
    out: TextIO | None = None,
) -> Iterator[stack.Stack]:
    """The whole mesh, started the way ``make up`` starts it, on free ports with a private
    redis-server; stopped afterwards, failing if any of its processes is left behind."""
    with redis_server() as redis_proc:
        running = stack.Stack(stack_config(base, redis_proc.url, env, mtls=mtls), out=out)
        try:
            running.up()
            yield running
        finally:
            pids = running.pids() if running.is_running() else {}
            running.down()
            left = {name: pid for name, pid in pids.items() if stack.pid_alive(pid)}
            if left:
                raise AssertionError(f"processes left behind after down(): {left}")
