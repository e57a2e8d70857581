"""The deadline server interceptors set the inbound deadline where the handler runs."""

from __future__ import annotations

import asyncio
from concurrent import futures
from typing import Any

import grpc
import grpc.aio

import resilience

METHOD = "/resiliencetest.v1.Raw/Remaining"
# A deadline travels as a relative grpc-timeout, so each hop's deadline is later by the time
# the call spent in transit, and servers convert it between clocks (a few ms either way). On a
# loaded 2-core machine transit alone was seen at ~100 ms, so bounds allow half a second: still
# far below what a missing cap would show (30 s policy, 9.2e18 with no deadline). The exact
# margin arithmetic is unit-tested with a fake clock (test_pipeline.py).
SKEW = 0.5


def _handler(seen: list[float | None]) -> grpc.GenericRpcHandler:
    def remaining(request: bytes, context: Any) -> bytes:
        seen.append(resilience.remaining_time())
        return b""

    def stream(request: bytes, context: Any) -> Any:
        for _ in range(2):
            seen.append(resilience.remaining_time())
            yield b""

    return grpc.method_handlers_generic_handler(
        "resiliencetest.v1.Raw",
        {
            "Remaining": grpc.unary_unary_rpc_method_handler(remaining),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
        },
    )


def test_sync_handler_thread_sees_the_inbound_deadline_and_none_without_one() -> None:
    seen: list[float | None] = []
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=2),
        interceptors=[resilience.DeadlineServerInterceptor()],
    )
    server.add_generic_rpc_handlers((_handler(seen),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            channel.unary_unary(METHOD)(b"", timeout=5)
            channel.unary_unary(METHOD)(b"")  # no deadline: time_remaining() is ~9.2e18
            list(channel.unary_stream("/resiliencetest.v1.Raw/Stream")(b"", timeout=3))
            channel.unary_unary(METHOD)(b"")  # the pool thread must not keep an old deadline
    finally:
        server.stop(None)
    first, none, s1, s2, none_again = seen
    assert first is not None
    assert 0 < first <= 5 + SKEW
    assert none is None
    assert none_again is None
    assert s1 is not None
    assert s2 is not None
    assert 0 < s2 <= s1 <= 3 + SKEW


def test_aio_handler_sees_the_inbound_deadline() -> None:
    seen: list[float | None] = []

    async def main() -> None:
        async def remaining(request: bytes, context: Any) -> bytes:
            seen.append(resilience.remaining_time())
            return b""

        server = grpc.aio.server(interceptors=[resilience.AioDeadlineServerInterceptor()])
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "resiliencetest.v1.Raw",
                    {"Remaining": grpc.unary_unary_rpc_method_handler(remaining)},
                ),
            )
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await channel.unary_unary(METHOD)(b"", timeout=4)
            await channel.unary_unary(METHOD)(b"")
        await server.stop(None)

    asyncio.run(main())
    with_deadline, without = seen
    assert with_deadline is not None
    assert 0 < with_deadline <= 4 + SKEW
    assert without is None
