"""FaultService: fails, holds and pushes back on request; counts attempts per key.

Also runnable as a process (`python fault_service.py sync|aio|client ...`) for the
deadline propagation test.
"""

from __future__ import annotations

import asyncio
import collections
import json
import sys
import threading
from concurrent import futures
from typing import Any

import grpc
import grpc.aio
from resiliencetest.v1 import fault_pb2, fault_pb2_grpc

import resilience

SERVICE = fault_pb2.DESCRIPTOR.services_by_name["FaultService"]
NO_DEADLINE = -1.0


def _remaining(context: Any) -> float:
    remaining = context.time_remaining()
    return NO_DEADLINE if remaining is None or remaining > 1e8 else float(remaining)


class FaultServicer(fault_pb2_grpc.FaultServiceServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self.address = ""
        self.attempts: collections.Counter[str] = collections.Counter()
        self.in_flight = 0
        self.held = threading.Condition()
        self._lock = threading.Lock()
        self._gates: dict[str, threading.Event] = {}

    def gate(self, key: str) -> threading.Event:
        with self._lock:
            return self._gates.setdefault(key, threading.Event())

    def release_all(self) -> None:
        with self._lock:
            for gate in self._gates.values():
                gate.set()

    def wait_held(self, n: int, timeout: float = 10) -> None:
        with self.held:
            assert self.held.wait_for(lambda: self.in_flight >= n, timeout)

    def _answer(self, request: Any, context: Any) -> Any:
        with self._lock:
            self.attempts[request.key] += 1
            attempt = self.attempts[request.key]
        if request.hold:
            with self.held:
                self.in_flight += 1
                self.held.notify_all()
            self.gate(request.key).wait(30)
            with self.held:
                self.in_flight -= 1
        if request.fail_first < 0 or attempt <= request.fail_first:
            if request.pushback_ms:
                context.set_trailing_metadata((("grpc-retry-pushback-ms", request.pushback_ms),))
            code = grpc.StatusCode[request.fail_code or "UNAVAILABLE"]
            context.abort(code, f"injected {code.name} on attempt {attempt}")
        return fault_pb2.FaultReply(attempt=attempt, time_remaining=[_remaining(context)])

    def Get(self, request: Any, context: Any) -> Any:  # noqa: N802  # gRPC method names
        return self._answer(request, context)

    def Create(self, request: Any, context: Any) -> Any:  # noqa: N802  # gRPC method names
        return self._answer(request, context)

    def Watch(self, request: Any, context: Any) -> Any:  # noqa: N802  # gRPC method names
        reply = self._answer(request, context)
        for i in range(3):
            yield fault_pb2.FaultReply(attempt=reply.attempt + i)

    def Relay(self, request: Any, context: Any) -> Any:  # noqa: N802  # gRPC method names
        return relay_sync(request, context)


def add_to_server(servicer: Any, server: Any) -> None:
    fault_pb2_grpc.add_FaultServiceServicer_to_server(servicer, server)


RELAY_POLICY = {
    # Far longer than the test's deadline: only propagation can make the next hop see less.
    "methodConfig": [{"name": [{}], "timeout": "30s"}],
    "deadlineMargin": "0.05s",
}


def _next(request: Any) -> Any:
    return fault_pb2.FaultRequest(key=request.key, next_targets=request.next_targets[1:])


def relay_sync(request: Any, context: Any) -> Any:
    mine = _remaining(context)
    if not request.next_targets:
        return fault_pb2.FaultReply(time_remaining=[mine])
    target = request.next_targets[0]
    policy = resilience.build_policy(RELAY_POLICY, env={}, descriptors=[SERVICE])
    with grpc.insecure_channel(target) as channel:
        pipeline = resilience.Pipeline(target=target, policy=policy)
        stub = fault_pb2_grpc.FaultServiceStub(resilience.intercept_channel(channel, pipeline))
        downstream = stub.Relay(_next(request))
    return fault_pb2.FaultReply(time_remaining=[mine, *downstream.time_remaining])


class AioRelay(fault_pb2_grpc.FaultServiceServicer):  # type: ignore[misc]
    async def Relay(self, request: Any, context: Any) -> Any:  # noqa: N802  # gRPC method names
        mine = _remaining(context)
        if not request.next_targets:
            return fault_pb2.FaultReply(time_remaining=[mine])
        target = request.next_targets[0]
        policy = resilience.build_policy(RELAY_POLICY, env={}, descriptors=[SERVICE])
        interceptors = resilience.aio_interceptors(
            resilience.Pipeline(target=target, policy=policy)
        )
        async with grpc.aio.insecure_channel(target, interceptors=interceptors) as channel:
            downstream = await fault_pb2_grpc.FaultServiceStub(channel).Relay(_next(request))
        return fault_pb2.FaultReply(time_remaining=[mine, *downstream.time_remaining])


def _serve_sync() -> None:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        interceptors=[resilience.DeadlineServerInterceptor()],
    )
    add_to_server(FaultServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    server.wait_for_termination()


async def _serve_aio() -> None:
    server = grpc.aio.server(interceptors=[resilience.AioDeadlineServerInterceptor()])
    add_to_server(AioRelay(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


def _client(targets: list[str], timeout: float | None) -> None:
    with grpc.insecure_channel(targets[0]) as channel:
        stub = fault_pb2_grpc.FaultServiceStub(channel)
        reply = stub.Relay(
            fault_pb2.FaultRequest(key="relay", next_targets=targets[1:]), timeout=timeout
        )
    print(json.dumps(list(reply.time_remaining)), flush=True)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "sync":
        _serve_sync()
    elif mode == "aio":
        asyncio.run(_serve_aio())
    else:
        timeout = float(sys.argv[2]) if sys.argv[2] != "none" else None
        _client(sys.argv[3:], timeout)
