"""Each probe against the real thing: a gRPC server on port 0 with the mesh's mTLS, Redis."""

from __future__ import annotations

import dataclasses
import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshctl import probes
from meshctl.registry import INVENTORY, INVENTORY_SERVICE, PROMETHEUS_PORT
from meshctl.testing import stack_config
from meshkit.server import RunningServer, ServerOptions, build_server
from meshkit.testing import free_port
from meshkit.tls import WorkloadTls


@pytest.fixture
def backend_server(mesh_certs: Path) -> Iterator[RunningServer]:
    """A server as a backend runs: mTLS with inventory's certificate, answering only Envoy."""
    tls = WorkloadTls.load(mesh_certs, "inventory")
    running = build_server(
        ServerOptions(port=0, grace_s=0, tls=tls),
        service_names=(INVENTORY_SERVICE,),
        registrations=(),
        checks={},
    )
    yield running
    running.stop()


def test_a_backend_is_asked_as_envoy_over_mtls(
    tmp_path: Path, mesh_certs: Path, backend_server: RunningServer
) -> None:
    assert INVENTORY.backend is not None
    base = stack_config(tmp_path, "redis://127.0.0.1:6379/0")
    ports = {**base.ports, INVENTORY.backend.port.var: backend_server.port}
    config = dataclasses.replace(base, certs_dir=mesh_certs, ports=ports)
    assert INVENTORY.probe(config) == probes.SERVING
    # Without Envoy's certificate the backend does not even finish the handshake.
    plaintext = dataclasses.replace(config, mtls=False)
    assert INVENTORY.probe(plaintext).startswith("unreachable (")


def test_redis_probe_answers_only_where_redis_is(tmp_path: Path, redis_url: str) -> None:
    assert probes.redis_up(stack_config(tmp_path, redis_url)) == probes.SERVING
    absent = f"redis://127.0.0.1:{free_port()}/0"
    assert probes.redis_up(stack_config(tmp_path, absent)) == "not answering"


def test_the_recorder_serves_once_its_record_exists(tmp_path: Path) -> None:
    config = stack_config(tmp_path, "redis://127.0.0.1:6379/0")
    assert probes.record_written(config) == "no pid record written"
    config.run_dir.mkdir(parents=True)
    config.pid_record.write_text("{}")
    assert probes.record_written(config) == probes.SERVING


def test_envoy_is_not_ready_while_its_admin_is_unreachable(tmp_path: Path) -> None:
    config = stack_config(tmp_path, "redis://127.0.0.1:6379/0")
    assert probes.EnvoyReady(("order",))(config).startswith("admin unreachable (")


def test_a_bound_port_is_not_free() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        assert not probes.port_is_free("127.0.0.1", sock.getsockname()[1])
    assert probes.port_is_free("127.0.0.1", free_port())


class _Answers(http.server.BaseHTTPRequestHandler):
    """200 on /ready, 503 anywhere else."""

    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/ready" else 503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_an_http_probe_serves_on_200_only(tmp_path: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answers)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = stack_config(tmp_path, "redis://127.0.0.1:6379/0")
        port = PROMETHEUS_PORT
        config = dataclasses.replace(base, ports={**base.ports, port.var: server.server_address[1]})
        assert probes.HttpOk(port, "/ready")(config) == probes.SERVING
        assert probes.HttpOk(port, "/-/ready")(config) == "GET /-/ready: HTTP 503"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert probes.HttpOk(port, "/ready")(config).startswith("unreachable (")
