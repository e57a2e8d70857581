"""Starts one payment deployment (v1 or v2) with health, reflection and metrics."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import grpc

from mesh.payment.v1 import payment_pb2, payment_pb2_grpc
from meshkit.faults import FaultFile
from meshkit.server import RunningServer, ServerOptions, build_server

from .config import Settings
from .domain import FaultPolicy
from .faults import ChargeFaults, LiveFaults
from .servicer import PaymentServicer
from .store import PaymentStore

SERVICE_NAME = payment_pb2.DESCRIPTOR.services_by_name["PaymentService"].full_name


def serve(
    settings: Settings,
    *,
    rng: random.Random | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> RunningServer:
    """Opens the shared payment database and starts serving; ``rng``/``sleep`` drive the faults."""
    store = PaymentStore(settings.db_path, version=settings.version)
    draw = (rng or random.Random()).random
    initial = FaultPolicy(
        rate=settings.fault_rate, latency_s=settings.latency_ms / 1000, random=draw, sleep=sleep
    )
    faults = LiveFaults(
        ChargeFaults(initial, settings.fault_code, f"PAYMENT_FAULT_RATE={settings.fault_rate}"),
        FaultFile(settings.fault_file),
        random=draw,
        sleep=sleep,
    )
    servicer = PaymentServicer(store, faults)

    def register(server: grpc.Server) -> None:
        payment_pb2_grpc.add_PaymentServiceServicer_to_server(servicer, server)

    return build_server(
        ServerOptions.of(settings),
        service_names=[SERVICE_NAME],
        registrations=[register],
        checks={"sqlite": store.ping},
    )
