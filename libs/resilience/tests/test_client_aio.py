"""The grpc.aio interceptors against a real server on port 0; attempts are counted server-side."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import ModuleType
from typing import Any

import grpc
import grpc.aio
import pytest
from test_client_sync import RETRY_ALL

import resilience
from resilience import ClientPolicy, RecordingListener, build_policy
from resilience.testing import FakeClock

Body = Callable[[Any], Awaitable[None]]


def make_policy(pb: ModuleType, **overrides: Any) -> ClientPolicy:
    doc = dict(RETRY_ALL)
    doc.update(overrides)
    return build_policy(doc, env={}, descriptors=[pb.DESCRIPTOR.services_by_name["FaultService"]])


pytestmark = pytest.mark.parametrize("mode", ["interceptors", "channel"])


def run(
    mode: str,
    fault_server: Any,
    pb_grpc: ModuleType,
    policy: ClientPolicy,
    body: Body,
    *,
    listeners: Any = (),
    clock: Any = None,
) -> None:
    async def main() -> None:
        pipeline = resilience.Pipeline(
            target=fault_server.address,
            policy=policy,
            listeners=listeners,
            clock=clock or resilience.SYSTEM_CLOCK,
        )
        if mode == "interceptors":
            interceptors = resilience.aio_interceptors(pipeline)
            async with grpc.aio.insecure_channel(
                fault_server.address, interceptors=interceptors
            ) as channel:
                await body(pb_grpc.FaultServiceStub(channel))
        else:
            channel = resilience.intercept_aio_channel(
                grpc.aio.insecure_channel(fault_server.address), pipeline
            )
            async with channel:
                await body(pb_grpc.FaultServiceStub(channel))

    asyncio.run(main())


def test_transient_unavailable_is_retried_to_success(
    mode: str, pb: ModuleType, pb_grpc: ModuleType, fault_server: Any
) -> None:
    async def body(stub: Any) -> None:
        reply = await stub.Get(pb.FaultRequest(key="t", fail_first=2))
        assert reply.attempt == 3

    run(mode, fault_server, pb_grpc, make_policy(pb), body)
    assert fault_server.attempts["t"] == 3


def test_non_retryable_and_non_idempotent(
    mode: str, pb: ModuleType, pb_grpc: ModuleType, fault_server: Any
) -> None:
    async def body(stub: Any) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Get(pb.FaultRequest(key="bad", fail_first=-1, fail_code="INVALID_ARGUMENT"))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Create(pb.FaultRequest(key="nokey", fail_first=1))
        assert (
            await stub.Create(pb.FaultRequest(key="key", fail_first=1, request_id="r"))
        ).attempt == 2

    run(mode, fault_server, pb_grpc, make_policy(pb), body)
    assert fault_server.attempts["bad"] == 1
    assert fault_server.attempts["nokey"] == 1


def test_pushback_is_honoured(
    mode: str, pb: ModuleType, pb_grpc: ModuleType, fault_server: Any
) -> None:
    events = RecordingListener()

    async def body(stub: Any) -> None:
        assert (
            await stub.Get(pb.FaultRequest(key="pb", fail_first=1, pushback_ms="20"))
        ).attempt == 2
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Get(pb.FaultRequest(key="neg", fail_first=1, pushback_ms="-5"))

    run(mode, fault_server, pb_grpc, make_policy(pb), body, listeners=[events])
    [scheduled] = events.of(resilience.RetryScheduled)
    assert scheduled.delay == 0.02
    assert scheduled.pushback
    assert fault_server.attempts["neg"] == 1


def test_budget_caps_a_retry_storm(
    mode: str, pb: ModuleType, pb_grpc: ModuleType, fault_server: Any
) -> None:
    calls = 40

    async def body(stub: Any) -> None:
        async def one() -> None:
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Get(pb.FaultRequest(key="storm", fail_first=-1))

        await asyncio.gather(*(one() for _ in range(calls)))

    run(
        mode,
        fault_server,
        pb_grpc,
        make_policy(pb, retryThrottling={"maxTokens": 10, "tokenRatio": 0.1}),
        body,
    )
    assert calls < fault_server.attempts["storm"] <= calls + 5


def test_breaker_opens_fails_fast_and_a_probe_closes_it(
    mode: str, pb: ModuleType, pb_grpc: ModuleType, fault_server: Any
) -> None:
    clock = FakeClock()

    async def body(stub: Any) -> None:
        for _ in range(2):
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Get(pb.FaultRequest(key="down", fail_first=-1, fail_code="INTERNAL"))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Get(pb.FaultRequest(key="fast"))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "is open: will probe again in 1.000s" in (err.value.details() or "")
        assert resilience.never_sent(err.value)
        clock.advance(1)
        assert (await stub.Get(pb.FaultRequest(key="probe"))).attempt == 1

    policy = make_policy(pb, circuitBreaker={"consecutiveFailures": 2, "resetTimeout": "1s"})
    run(mode, fault_server, pb_grpc, policy, body, clock=clock)
    assert fault_server.attempts["fast"] == 0


def test_bulkhead_rejects_over_its_limit(
    mode: str, pb: ModuleType, pb_grpc: ModuleType, fault_server: Any
) -> None:
    async def body(stub: Any) -> None:
        held = [
            asyncio.ensure_future(stub.Get(pb.FaultRequest(key="held", hold=True)))
            for _ in range(2)
        ]
        await asyncio.get_running_loop().run_in_executor(None, fault_server.wait_held, 2)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Get(pb.FaultRequest(key="third"))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert resilience.never_sent(err.value)
        fault_server.gate("held").set()
        assert len(await asyncio.gather(*held)) == 2

    run(mode, fault_server, pb_grpc, make_policy(pb, bulkhead={"maxConcurrentCalls": 2}), body)
    assert fault_server.attempts["third"] == 0


def test_cancelling_a_call_frees_its_bulkhead_slot(
    mode: str, pb: ModuleType, pb_grpc: ModuleType, fault_server: Any
) -> None:
    async def body(stub: Any) -> None:
        call = asyncio.ensure_future(stub.Get(pb.FaultRequest(key="cancel", hold=True)))
        await asyncio.get_running_loop().run_in_executor(None, fault_server.wait_held, 1)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert (await stub.Get(pb.FaultRequest(key="next"))).attempt == 1

    run(mode, fault_server, pb_grpc, make_policy(pb, bulkhead={"maxConcurrentCalls": 1}), body)


def test_server_streaming_is_not_retried(
    mode: str, pb: ModuleType, pb_grpc: ModuleType, fault_server: Any
) -> None:
    async def body(stub: Any) -> None:
        assert [r.attempt async for r in stub.Watch(pb.FaultRequest(key="s"))] == [1, 2, 3]
        with pytest.raises(grpc.aio.AioRpcError):
            async for _ in stub.Watch(pb.FaultRequest(key="s-fail", fail_first=-1)):
                pass

    run(mode, fault_server, pb_grpc, make_policy(pb), body)
    assert fault_server.attempts["s-fail"] == 1
