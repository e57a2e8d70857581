"""meshkit._handlers.InterceptedOncePerMethod on a real grpc server on port 0."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from meshkit._handlers import Continuation, InterceptedOncePerMethod, rewrap

METHODS = ("/test.Echo/Upper", "/test.Echo/Lower")


class Recording(grpc.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    """Counts the handlers it builds, and the calls its wrapped behaviours see, per method."""

    def __init__(self, name: str, order: list[str]) -> None:
        self.name = name
        self.built: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self._order = order

    def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None:
            return None
        self.built[method] += 1

        def wrap(behaviour: Callable[..., Any]) -> Callable[..., Any]:
            def recorded(request: bytes, context: grpc.ServicerContext) -> Any:
                self.calls[method] += 1
                self._order.append(self.name)
                return behaviour(request, context)

            return recorded

        return rewrap(handler, wrap)


class Echo(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpc is untyped
    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if details.method == METHODS[0]:
            return grpc.unary_unary_rpc_method_handler(lambda request, _: request.upper())
        if details.method == METHODS[1]:
            return grpc.unary_unary_rpc_method_handler(lambda request, _: request.lower())
        return None


@pytest.fixture
def order() -> list[str]:
    return []


@pytest.fixture
def recorders(order: list[str]) -> tuple[Recording, Recording]:
    return Recording("outer", order), Recording("inner", order)


@pytest.fixture
def channel(recorders: tuple[Recording, Recording]) -> Iterator[grpc.Channel]:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        interceptors=[InterceptedOncePerMethod(recorders)],
    )
    server.add_generic_rpc_handlers([Echo()])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        server.stop(0).wait()


def _call(channel: grpc.Channel, method: str, request: bytes) -> bytes:
    response: bytes = channel.unary_unary(method)(request, timeout=5)
    return response


def test_each_method_is_intercepted_once_and_every_call_runs_the_wrapped_behaviour(
    channel: grpc.Channel, recorders: tuple[Recording, Recording], order: list[str]
) -> None:
    answers = [_call(channel, METHODS[n % 2], b"MiXeD") for n in range(10)]

    assert answers == [b"MIXED", b"mixed"] * 5
    for recorder in recorders:
        assert recorder.built == {METHODS[0]: 1, METHODS[1]: 1}
        assert recorder.calls == {METHODS[0]: 5, METHODS[1]: 5}
    # The interceptors keep their order: the first given is the outermost.
    assert order[:2] == ["outer", "inner"]


def test_an_unknown_method_is_unimplemented_each_time_and_never_kept(
    channel: grpc.Channel, recorders: tuple[Recording, Recording]
) -> None:
    for n in range(3):
        with pytest.raises(grpc.RpcError) as refused:
            _call(channel, f"/test.Echo/Made{n}Up", b"x")
        assert refused.value.code() is grpc.StatusCode.UNIMPLEMENTED

    assert _call(channel, METHODS[0], b"ok") == b"OK"
    assert recorders[0].built == {METHODS[0]: 1}
