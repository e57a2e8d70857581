"""The whole mesh, started once per session the way `make up` starts it: meshctl.stack.Stack
on free ports in a temp dir, with a private redis-server and the real Envoy binary."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from meshctl.stack import Stack
from meshctl.testing import running_stack
from meshkit.tls import WorkloadTls


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
