"""mTLS on a real server on port 0: only Envoy's certificate from the mesh CA gets an answer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from meshctl.pki import ensure_certificates
from meshkit.server import RunningServer, ServerOptions, build_server
from meshkit.settings import SettingsError
from meshkit.tls import WorkloadTls, mtls_enabled, workload_tls


@pytest.fixture
def payment_server(mesh_certs: Path) -> Iterator[RunningServer]:
    """A server holding the payment workload's certificate (health and reflection only)."""
    tls = WorkloadTls.load(mesh_certs, "payment")
    running = build_server(
        ServerOptions(port=0, grace_s=0, tls=tls),
        service_names=(),
        registrations=(),
        checks={},
    )
    yield running
    running.stop()


def _check(
    port: int, credentials: grpc.ChannelCredentials | None
) -> health_pb2.HealthCheckResponse:
    target = f"127.0.0.1:{port}"
    channel = (
        grpc.insecure_channel(target)
        if credentials is None
        else grpc.secure_channel(target, credentials)
    )
    with channel:
        response: health_pb2.HealthCheckResponse = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        return response


def test_envoy_identity_is_answered(payment_server: RunningServer, mesh_certs: Path) -> None:
    envoy = WorkloadTls.load(mesh_certs, "envoy")
    assert _check(payment_server.port, envoy.channel_credentials()).status == (
        health_pb2.HealthCheckResponse.SERVING
    )


def test_another_workload_of_the_mesh_is_refused(
    payment_server: RunningServer, mesh_certs: Path
) -> None:
    order = WorkloadTls.load(mesh_certs, "order")
    with pytest.raises(grpc.RpcError) as refused:
        _check(payment_server.port, order.channel_credentials())
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "only the mesh's Envoy" in refused.value.details()


def test_a_plaintext_caller_is_refused(payment_server: RunningServer) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        _check(payment_server.port, None)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_certificate_from_another_ca_is_refused(
    payment_server: RunningServer, mesh_certs: Path, tmp_path: Path
) -> None:
    ensure_certificates(tmp_path, ["envoy"])  # same name, someone else's CA
    impostor = WorkloadTls.load(tmp_path, "envoy")
    trusting_mesh_ca = grpc.ssl_channel_credentials(
        root_certificates=(mesh_certs / "ca.pem").read_bytes(),
        private_key=impostor.key,
        certificate_chain=impostor.cert,
    )
    with pytest.raises(grpc.RpcError) as refused:
        _check(payment_server.port, trusting_mesh_ca)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(("raw", "enabled"), [("", True), ("1", True), ("on", True), ("0", False)])
def test_mesh_mtls_values(raw: str, enabled: bool) -> None:
    assert mtls_enabled({"MESH_MTLS": raw}) is enabled


def test_mtls_off_needs_no_certificates(tmp_path: Path) -> None:
    assert workload_tls("order", {"MESH_MTLS": "0", "MESH_CERTS_DIR": str(tmp_path)}) is None


def test_missing_key_names_the_file_and_the_way_out(mesh_certs: Path, tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_bytes((mesh_certs / "ca.pem").read_bytes())
    (tmp_path / "order.pem").write_bytes((mesh_certs / "order.pem").read_bytes())
    with pytest.raises(SettingsError, match=r"cannot read order-key\.pem.*MESH_MTLS=0"):
        workload_tls("order", {"MESH_CERTS_DIR": str(tmp_path)})
