"""The whole mesh, started once per session the way `make up` starts it: meshctl.stack.Stack
on free ports in a temp dir, with a private redis-server and the real Envoy binary; and a
second one that exports traces to a real OTLP receiver and logs at DEBUG, shared by the
modules that read traces and logs (each stack start costs ~10 s)."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from meshctl.stack import Stack
from meshctl.testing import running_stack
from meshkit.tls import WorkloadTls
from meshkit.trace_testing import OtlpReceiver, otlp_receiver


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The running mesh; torn down at the end of the session, checking nothing is left."""
    with running_stack(tmp_path_factory.mktemp("stack")) as running:
        yield running


@pytest.fixture(scope="session")
def edge(stack: Stack) -> Iterator[grpc.Channel]:
    """One channel to the Envoy edge, as a user's client would hold it."""
    with grpc.insecure_channel(stack.config.edge_target) as channel:
        yield channel


@pytest.fixture(scope="session")
def as_order(stack: Stack) -> Iterator[grpc.Channel]:
    """A channel to Envoy's internal listener holding the order workload's certificate: the
    one caller RBAC lets move money and stock, as the order service itself calls."""
    order = WorkloadTls.load(stack.config.certs_dir, "order")
    with grpc.secure_channel(stack.config.internal_target, order.channel_credentials()) as channel:
        yield channel


@pytest.fixture(scope="session")
def receiver() -> Iterator[OtlpReceiver]:
    with otlp_receiver() as running:
        yield running


@pytest.fixture(scope="session")
def traced_stack(
    tmp_path_factory: pytest.TempPathFactory, receiver: OtlpReceiver
) -> Iterator[Stack]:
    """A mesh exporting to ``receiver``, as `OTEL_EXPORTER_OTLP_ENDPOINT=... make up` exports to
    Jaeger, and logging every saga step (MESH_LOG_LEVEL=DEBUG)."""
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        # Export within 100 ms of a span's end, not the SDK's 5 s.
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "MESH_LOG_LEVEL": "DEBUG",
    }
    with running_stack(tmp_path_factory.mktemp("traced"), env) as running:
        yield running
