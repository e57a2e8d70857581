"""A capped method refuses what is over its cap at once, with pushback; other methods go on."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from meshkit.admission import ConcurrencyLimitInterceptor
from meshkit.errors import PUSHBACK_HEADER, ErrorMappingInterceptor

SLOW = "/test.v1.Svc/Slow"
FAST = "/test.v1.Svc/Fast"


class Gate:
    def __init__(self) -> None:
        self.open = threading.Event()
        self.entered = threading.Semaphore(0)

    def slow(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self.entered.release()
        self.open.wait(10)
        return request


@pytest.fixture
def gate() -> Iterator[Gate]:
    g = Gate()
    yield g
    g.open.set()


@pytest.fixture
def channel(gate: Gate) -> Iterator[grpc.Channel]:
    handlers = {
        "Slow": grpc.unary_unary_rpc_method_handler(gate.slow),
        "Fast": grpc.unary_unary_rpc_method_handler(lambda request, context: request),
    }
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8),
        interceptors=[ErrorMappingInterceptor(), ConcurrencyLimitInterceptor({SLOW: 2})],
    )
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.v1.Svc", handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield ch
    gate.open.set()
    server.stop(None)


def test_a_call_over_the_cap_is_refused_at_once_with_pushback(
    gate: Gate, channel: grpc.Channel
) -> None:
    slow, fast = channel.unary_unary(SLOW), channel.unary_unary(FAST)
    held = [slow.future(b"held", timeout=10) for _ in range(2)]
    for _ in held:
        assert gate.entered.acquire(timeout=10)

    with pytest.raises(grpc.RpcError) as refused:
        slow(b"third", timeout=10)

    error = refused.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.details() == f"{SLOW} is at its limit of 2 calls in flight; try again"
    assert dict(error.trailing_metadata())[PUSHBACK_HEADER] == "100"
    status = rpc_status.from_call(error)
    assert status is not None
    info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info)
    assert info.retry_delay.ToMilliseconds() == 100
    # The other method has threads of its own to run on.
    assert fast(b"ping", timeout=5) == b"ping"

    gate.open.set()
    assert [f.result() for f in held] == [b"held", b"held"]
    assert slow(b"after", timeout=10) == b"after"  # the slots came back


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match=r"/a.B/C: a limit of calls in flight must be >= 1"):
        ConcurrencyLimitInterceptor({"/a.B/C": 0})
