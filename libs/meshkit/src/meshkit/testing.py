"""Helpers for tests of mesh services: free ports, a throwaway redis-server, health waits.

Whole stacks (Envoy and every service under supervisord) are meshctl.testing's."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import redis
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from meshkit.health import SERVING, serving_status


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
def redis_server(port: int | None = None, *, workdir: Path | None = None) -> Iterator[RedisServer]:
    """Starts a private ``redis-server`` that keeps nothing on disk, and stops it afterwards.

    With ``workdir`` (kept afterwards), a ``SHUTDOWN SAVE`` writes the data there and the next
    server started on it loads them: a Redis restarted with its data, as a persistent one is.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed: run `make setup`")
    port = port or free_port()
    directory = str(workdir) if workdir is not None else tempfile.mkdtemp(prefix="mesh-redis-")
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
            directory,
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
        if workdir is None:
            shutil.rmtree(directory, ignore_errors=True)


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
    return serving_status(target, service, timeout_s) == SERVING


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports that were free a moment ago."""
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


def field_violations(error: grpc.RpcError) -> dict[str, str]:
    """The google.rpc.BadRequest field violations of an INVALID_ARGUMENT, by field."""
    status = rpc_status.from_call(error)
    assert status is not None, "INVALID_ARGUMENT must carry a google.rpc.Status"
    found: dict[str, str] = {}
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            found.update({v.field: v.description for v in bad.field_violations})
    return found
