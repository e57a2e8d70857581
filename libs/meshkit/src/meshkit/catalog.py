"""The mesh's API catalogue: server reflection for the edge.

Envoy routes by gRPC path, and a reflection stream has one path for every
service, so it can reach only one backend. Each service's own reflection lists
just that service (true when called directly); Envoy sends the edge's reflection
and health calls here instead, where reflection lists all three services and
serves their descriptors, so ``grpcurl -plaintext 127.0.0.1:8080 list`` and
``describe`` work for the whole mesh with no proto files on the user's side.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from mesh.inventory.v1 import inventory_pb2
from mesh.order.v1 import order_pb2
from mesh.payment.v1 import payment_pb2
from meshkit import settings, tracing
from meshkit.server import (
    RunningServer,
    ServerOptions,
    build_server,
    configure_logging,
    run_until_signalled,
)
from meshkit.settings import load_or_exit
from meshkit.tls import workload_tls

MESH_SERVICES = (
    order_pb2.DESCRIPTOR.services_by_name["OrderService"].full_name,
    inventory_pb2.DESCRIPTOR.services_by_name["InventoryService"].full_name,
    payment_pb2.DESCRIPTOR.services_by_name["PaymentService"].full_name,
)


def serve(options: ServerOptions) -> RunningServer:
    return build_server(
        options,
        service_names=(),
        reflection_names=MESH_SERVICES,
        registrations=(),
        checks={},
    )


CATALOG_PORT = settings.port("CATALOG_PORT", 50050, doc="the catalog's gRPC port (Envoy only)")


def options_from_env(env: Mapping[str, str] = os.environ) -> ServerOptions:
    return ServerOptions(
        host=settings.HOST.read(env),
        port=CATALOG_PORT.read(env),
        tls=workload_tls("catalog", env),
    )


def main() -> None:
    options = load_or_exit("catalog", options_from_env)
    configure_logging("catalog")
    tracing.start("catalog")
    run_until_signalled(serve(options))


if __name__ == "__main__":
    main()
