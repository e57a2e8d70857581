"""The sync interceptors against a real grpc server on port 0; attempts are counted server-side."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import grpc
import pytest

import resilience
from resilience import (
    BreakerOptions,
    BulkheadOptions,
    ClientPolicy,
    ConsecutiveFailures,
    RecordingListener,
    ThrottleOptions,
    build_policy,
)
from resilience.testing import FakeClock

RETRY_ALL = {
    "methodConfig": [
        {
            "name": [{}],
            "timeout": "10s",
            "retryPolicy": {
                "maxAttempts": 4,
                "initialBackoff": "0.001s",
                "maxBackoff": "0.005s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"],
            },
        }
    ],
    "circuitBreaker": None,
    "retryThrottling": None,
    "bulkhead": None,
}


def make_policy(pb: ModuleType, **overrides: Any) -> ClientPolicy:
    doc = dict(RETRY_ALL)
    doc.update(overrides)
    return build_policy(doc, env={}, descriptors=[pb.DESCRIPTOR.services_by_name["FaultService"]])


@pytest.fixture(params=["channel", "interceptors"])
def connect(
    request: pytest.FixtureRequest, fault_server: Any, pb_grpc: ModuleType
) -> Iterator[Any]:
    """Both ways in: `intercept_channel` (ResilientChannel) and plain grpc interceptors."""
    channels: list[grpc.Channel] = []

    def _connect(
        policy: ClientPolicy, listeners: tuple[Any, ...] = (), clock: Any = resilience.SYSTEM_CLOCK
    ) -> Any:
        channel = grpc.insecure_channel(fault_server.address)
        channels.append(channel)
        pipeline = resilience.Pipeline(
            target=fault_server.address, policy=policy, listeners=listeners, clock=clock
        )
        if request.param == "channel":
            wrapped = resilience.intercept_channel(channel, pipeline)
        else:
            wrapped = grpc.intercept_channel(channel, *resilience.sync_interceptors(pipeline))
        return pb_grpc.FaultServiceStub(wrapped)

    yield _connect
    for channel in channels:
        channel.close()


def test_transient_unavailable_is_retried_to_success(
    pb: ModuleType, connect: Any, fault_server: Any
) -> None:
    events = RecordingListener()
    stub = connect(make_policy(pb), (events,))
    reply = stub.Get(pb.FaultRequest(key="t", fail_first=2))
    assert reply.attempt == 3
    assert fault_server.attempts["t"] == 3
    assert [e.attempt for e in events.of(resilience.AttemptEnded)] == [1, 2, 3]  # type: ignore[union-attr]


def test_with_call_and_future_work_too(pb: ModuleType, connect: Any, fault_server: Any) -> None:
    stub = connect(make_policy(pb))
    reply, call = stub.Get.with_call(pb.FaultRequest(key="w", fail_first=1))
    assert reply.attempt == 2
    assert call.code() == grpc.StatusCode.OK
    assert stub.Get.future(pb.FaultRequest(key="f", fail_first=1)).result().attempt == 2


@pytest.mark.parametrize(
    "code", ["INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION", "PERMISSION_DENIED"]
)
def test_non_retryable_codes_are_never_retried(
    pb: ModuleType, connect: Any, fault_server: Any, code: str
) -> None:
    stub = connect(make_policy(pb))
    with pytest.raises(grpc.RpcError) as err:
        stub.Get(pb.FaultRequest(key=code, fail_first=-1, fail_code=code))
    assert err.value.code() == grpc.StatusCode[code]
    assert fault_server.attempts[code] == 1


def test_non_idempotent_method_is_not_retried_without_a_key(
    pb: ModuleType, connect: Any, fault_server: Any
) -> None:
    stub = connect(make_policy(pb))
    with pytest.raises(grpc.RpcError):
        stub.Create(pb.FaultRequest(key="nokey", fail_first=1))
    assert fault_server.attempts["nokey"] == 1
    assert stub.Create(pb.FaultRequest(key="field", fail_first=1, request_id="r-1")).attempt == 2
    reply = stub.Create(
        pb.FaultRequest(key="header", fail_first=1), metadata=[("x-idempotency-key", "k-1")]
    )
    assert reply.attempt == 2


def test_pushback_is_honoured(pb: ModuleType, connect: Any, fault_server: Any) -> None:
    events = RecordingListener()
    stub = connect(make_policy(pb), (events,))
    assert stub.Get(pb.FaultRequest(key="pb", fail_first=1, pushback_ms="30")).attempt == 2
    [scheduled] = events.of(resilience.RetryScheduled)
    assert scheduled.delay == 0.03
    assert scheduled.pushback
    with pytest.raises(grpc.RpcError):
        stub.Get(pb.FaultRequest(key="neg", fail_first=1, pushback_ms="-1"))
    assert fault_server.attempts["neg"] == 1


def test_budget_caps_a_retry_storm(pb: ModuleType, connect: Any, fault_server: Any) -> None:
    policy = make_policy(pb, retryThrottling={"maxTokens": 10, "tokenRatio": 0.1})
    stub = connect(policy)
    calls = 50
    for i in range(calls):
        with pytest.raises(grpc.RpcError):
            stub.Get(pb.FaultRequest(key="storm", fail_first=-1))
        assert i < 10 or fault_server.attempts["storm"] <= calls + 5
    # 10 tokens, retries only while tokens > 5: at most 5 retries ever at 100% failure,
    # against 150 had every call used its 4 attempts.
    assert fault_server.attempts["storm"] <= calls + 5
    assert fault_server.attempts["storm"] > calls


def test_breaker_opens_fails_fast_and_a_half_open_probe_closes_it(
    pb: ModuleType, connect: Any, fault_server: Any
) -> None:
    policy = make_policy(pb, circuitBreaker={"consecutiveFailures": 3, "resetTimeout": "5s"})
    events = RecordingListener()
    clock = FakeClock()  # the breaker's reset timeout passes without a real sleep
    stub = connect(policy, (events,), clock)
    for _ in range(3):
        with pytest.raises(grpc.RpcError):
            stub.Get(pb.FaultRequest(key="down", fail_first=-1, fail_code="INTERNAL"))
    assert fault_server.attempts["down"] == 3
    with pytest.raises(grpc.RpcError) as err:
        stub.Get(pb.FaultRequest(key="fast"))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert (
        f"circuit breaker for {fault_server.address} is open: will probe again in"
        in err.value.details()
    )
    assert fault_server.attempts["fast"] == 0  # failed fast: the server never saw it
    assert resilience.never_sent(err.value)
    [rejected] = events.of(resilience.BreakerRejected)
    assert rejected.probe_in == 5  # type: ignore[union-attr]
    clock.advance(5)
    assert stub.Get(pb.FaultRequest(key="probe")).attempt == 1
    states = [(e.old, e.new) for e in events.of(resilience.BreakerStateChanged)]  # type: ignore[union-attr]
    assert states == [("closed", "open"), ("open", "half-open"), ("half-open", "closed")]


def test_bulkhead_rejects_over_its_limit(pb: ModuleType, connect: Any, fault_server: Any) -> None:
    stub = connect(make_policy(pb, bulkhead={"maxConcurrentCalls": 2}))
    results: list[Any] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(stub.Get(pb.FaultRequest(key="held", hold=True)))
        )
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    fault_server.wait_held(2)
    with pytest.raises(grpc.RpcError) as err:
        stub.Get(pb.FaultRequest(key="third"))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert fault_server.attempts["third"] == 0
    assert resilience.never_sent(err.value)
    fault_server.gate("held").set()
    for t in threads:
        t.join(10)
    assert len(results) == 2
    assert stub.Get(pb.FaultRequest(key="after")).attempt == 1


def test_spent_deadline_fails_fast_without_sending(
    pb: ModuleType, connect: Any, fault_server: Any
) -> None:
    stub = connect(make_policy(pb, deadlineMargin="0.05s"))
    with resilience.deadline_scope(0.01), pytest.raises(grpc.RpcError) as err:
        stub.Get(pb.FaultRequest(key="late"))
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert fault_server.attempts["late"] == 0
    assert resilience.never_sent(err.value)


def test_an_error_from_the_callee_is_not_never_sent(
    pb: ModuleType, connect: Any, fault_server: Any
) -> None:
    with pytest.raises(grpc.RpcError) as answered:
        connect(make_policy(pb)).Get(
            pb.FaultRequest(key="bad", fail_first=-1, fail_code="INTERNAL")
        )
    assert not resilience.never_sent(answered.value)


def test_server_streaming_goes_through_breaker_and_bulkhead(
    pb: ModuleType, connect: Any, fault_server: Any
) -> None:
    policy = make_policy(pb, circuitBreaker={"consecutiveFailures": 1, "resetTimeout": "60s"})
    stub = connect(policy)
    assert [r.attempt for r in stub.Watch(pb.FaultRequest(key="s"))] == [1, 2, 3]
    with pytest.raises(grpc.RpcError):
        list(stub.Watch(pb.FaultRequest(key="s-fail", fail_first=-1)))
    assert fault_server.attempts["s-fail"] == 1  # streams are never retried
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Watch(pb.FaultRequest(key="s-after")))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "circuit breaker" in err.value.details()


def test_every_policy_on_with_prometheus(pb: ModuleType, connect: Any, fault_server: Any) -> None:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    policy = ClientPolicy(
        default=make_policy(pb).default,
        idempotency=make_policy(pb).idempotency,
        throttle=ThrottleOptions(),
        breaker=BreakerOptions(trip=ConsecutiveFailures(threshold=50)),
        bulkhead=BulkheadOptions(max_concurrent_calls=10),
    )
    stub = connect(policy, (resilience.PrometheusListener(registry=registry),))
    stub.Get(pb.FaultRequest(key="m", fail_first=1))
    labels = {"target": fault_server.address, "method": "/resiliencetest.v1.FaultService/Get"}
    sample = registry.get_sample_value
    assert sample("resilience_client_attempts_total", {**labels, "code": "UNAVAILABLE"}) == 1
    assert sample("resilience_client_attempts_total", {**labels, "code": "OK"}) == 1
    assert sample("resilience_client_retries_total", {**labels, "code": "UNAVAILABLE"}) == 1
    assert (
        sample("resilience_client_calls_total", {**labels, "code": "OK", "outcome": "success"}) == 1
    )
