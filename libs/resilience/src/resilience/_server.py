"""Server interceptors that capture the inbound deadline for outbound calls.

The deadline must be set in the context the handler runs in. The sync server runs handlers on
a thread pool, not where `intercept_service` runs, so these wrap the handler's behaviour
itself, for every call type.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc
import grpc.aio

from ._clock import SYSTEM_CLOCK, Clock
from ._deadline import _inbound_deadline, deadline_from_remaining

_BEHAVIOURS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")


def _wrap_sync(
    behaviour: Callable[..., Any], streaming_response: bool, clock: Clock
) -> Callable[..., Any]:
    if streaming_response:

        def stream(request: Any, context: Any) -> Iterator[Any]:
            token = _inbound_deadline.set(deadline_from_remaining(context.time_remaining(), clock))
            try:
                yield from behaviour(request, context)
            finally:
                _inbound_deadline.reset(token)

        return stream

    def unary(request: Any, context: Any) -> Any:
        token = _inbound_deadline.set(deadline_from_remaining(context.time_remaining(), clock))
        try:
            return behaviour(request, context)
        finally:
            _inbound_deadline.reset(token)

    return unary


def _wrap_async(behaviour: Callable[..., Any], clock: Clock) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(behaviour):

        async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
            token = _inbound_deadline.set(deadline_from_remaining(context.time_remaining(), clock))
            try:
                async for response in behaviour(request, context):
                    yield response
            finally:
                _inbound_deadline.reset(token)

        return stream

    if inspect.iscoroutinefunction(behaviour):

        async def unary(request: Any, context: Any) -> Any:
            token = _inbound_deadline.set(deadline_from_remaining(context.time_remaining(), clock))
            try:
                return await behaviour(request, context)
            finally:
                _inbound_deadline.reset(token)

        return unary
    return _wrap_sync(behaviour, inspect.isgeneratorfunction(behaviour), clock)


def _replace(handler: Any, wrap: Callable[[Callable[..., Any], bool], Callable[..., Any]]) -> Any:
    for name in _BEHAVIOURS:
        behaviour = getattr(handler, name)
        if behaviour is not None:
            return handler._replace(**{name: wrap(behaviour, handler.response_streaming)})
    return handler


class DeadlineServerInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]  # grpc bases are Any
    """Sync servers: every handler sees its inbound deadline (see `remaining_time()`)."""

    def __init__(self, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self._clock = clock

    def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        clock = self._clock
        return _replace(handler, lambda b, streaming: _wrap_sync(b, streaming, clock))


class AioDeadlineServerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc bases are Any
    """grpc.aio servers: every handler sees its inbound deadline."""

    def __init__(self, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self._clock = clock

    async def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        clock = self._clock
        return _replace(handler, lambda b, streaming: _wrap_async(b, clock))
