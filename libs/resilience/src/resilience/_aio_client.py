"""grpc.aio client interceptors: one object per call type, each running the whole pipeline."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import grpc
import grpc.aio

from ._call import CallState, Status
from ._clock import SYSTEM_CLOCK, Clock, Rng
from ._codes import CANCELLED
from ._errors import LocalFailure
from ._events import Listener
from ._grpc_common import code_name, grpc_code, has_idempotency_key, pushback
from ._pipeline import Pipeline
from ._policy import ClientPolicy

_Ctx = tuple[Any, Any, Any]  # (continuation, call details, request)


def _error(failure: LocalFailure) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        grpc_code(failure.code), grpc.aio.Metadata(), grpc.aio.Metadata(), failure.details
    )


class _AsyncUnaryAdapter:
    __slots__ = ()

    async def send(self, ctx: _Ctx, timeout: float, attempt: int) -> tuple[Any, Status | None]:
        continuation, d, request = ctx
        details = grpc.aio.ClientCallDetails(
            d.method, timeout, d.metadata, d.credentials, d.wait_for_ready
        )
        call = await continuation(details, request)
        try:
            code = await call.code()
        except asyncio.CancelledError:
            call.cancel()
            raise
        if code is grpc.StatusCode.OK:
            return call, None
        trailing = await call.trailing_metadata()
        return call, (code_name(code), pushback(trailing), has_idempotency_key(d.metadata, request))

    def local_error(self, ctx: _Ctx, failure: LocalFailure) -> Any:
        raise _error(failure)


_ADAPTER = _AsyncUnaryAdapter()


class _AioBase:
    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline
        self._watchers: set[asyncio.Task[None]] = set()

    async def _stream(self, continuation: Any, d: Any, request: Any) -> Any:
        """Streams are not retried (responses may already be consumed); the rest applies."""
        pipeline = self._pipeline
        try:
            call = pipeline.open_stream(pipeline.stream_plan(d.method), d.timeout)
        except LocalFailure as failure:
            raise _error(failure) from None
        details = grpc.aio.ClientCallDetails(
            d.method, call.timeout, d.metadata, d.credentials, d.wait_for_ready
        )
        try:
            rpc = await continuation(details, request)
        except BaseException:
            call.finish(CANCELLED)
            raise
        _watch(call, rpc, self._watchers)
        return rpc


def _watch(call: CallState, rpc: Any, watchers: set[asyncio.Task[None]]) -> None:
    """Account the stream's end when its status arrives, on a task kept alive until then."""

    async def watch() -> None:
        try:
            code = code_name(await rpc.code())
        except asyncio.CancelledError:
            code = CANCELLED
        call.finish(code)

    task = asyncio.ensure_future(watch())
    watchers.add(task)
    task.add_done_callback(watchers.discard)


class AioUnaryUnaryInterceptor(_AioBase, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]  # grpc bases are Any
    """The whole pipeline for unary calls, retries included."""

    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        d = client_call_details
        return await self._pipeline.run_async(
            self._pipeline.plan(d.method), d.timeout, _ADAPTER, (continuation, d, request)
        )


class AioUnaryStreamInterceptor(_AioBase, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]  # grpc bases are Any
    async def intercept_unary_stream(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        return await self._stream(continuation, client_call_details, request)


class AioStreamUnaryInterceptor(_AioBase, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]  # grpc bases are Any
    async def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await self._stream(continuation, client_call_details, request_iterator)


class AioStreamStreamInterceptor(_AioBase, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]  # grpc bases are Any
    async def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await self._stream(continuation, client_call_details, request_iterator)


def aio_interceptors(
    *,
    target: str,
    policy: ClientPolicy,
    listeners: Sequence[Listener] = (),
    clock: Clock = SYSTEM_CLOCK,
    rng: Rng | None = None,
    pipeline: Pipeline | None = None,
) -> list[grpc.aio.ClientInterceptor]:
    """The four aio interceptors (one per call type) for `grpc.aio.*_channel(interceptors=...)`."""
    if pipeline is None:
        pipeline = Pipeline(target=target, policy=policy, listeners=listeners, clock=clock, rng=rng)
    return [
        AioUnaryUnaryInterceptor(pipeline),
        AioUnaryStreamInterceptor(pipeline),
        AioStreamUnaryInterceptor(pipeline),
        AioStreamStreamInterceptor(pipeline),
    ]


class _DirectAsyncAdapter:
    """Sends an attempt straight to the aio channel's own multicallable."""

    __slots__ = ()

    async def send(
        self, ctx: _DirectCtx, timeout: float, attempt: int
    ) -> tuple[Any, Status | None]:
        inner, request, metadata, credentials, wait_for_ready, compression = ctx
        try:
            response = await inner(
                request,
                timeout=timeout,
                metadata=metadata,
                credentials=credentials,
                wait_for_ready=wait_for_ready,
                compression=compression,
            )
        except grpc.aio.AioRpcError as err:
            code, trailing = code_name(err.code()), err.trailing_metadata()
            return err, (code, pushback(trailing), has_idempotency_key(metadata, request))
        return response, None

    def local_error(self, ctx: _DirectCtx, failure: LocalFailure) -> Any:
        raise _error(failure)


_DirectCtx = tuple[Any, Any, Any, Any, Any, Any]
_DIRECT = _DirectAsyncAdapter()


class _AioUnaryUnary:
    """`await stub.M(request, ...)` through the pipeline; returns the response."""

    __slots__ = ("_inner", "_plan", "_run")

    def __init__(self, inner: Any, pipeline: Pipeline, method: str) -> None:
        self._inner = inner
        self._plan = pipeline.plan(method)
        self._run = pipeline.run_async

    async def __call__(
        self,
        request: Any,
        *,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        ctx = (self._inner, request, metadata, credentials, wait_for_ready, compression)
        result = await self._run(self._plan, timeout, _DIRECT, ctx)
        if isinstance(result, grpc.aio.AioRpcError):
            raise result
        return result


class _AioStream:
    """Streaming call types: admitted by bulkhead, deadline and breaker; never retried."""

    __slots__ = ("_base", "_inner", "_plan")

    def __init__(self, inner: Any, base: _AioBase, method: str) -> None:
        self._inner = inner
        self._base = base
        self._plan = base._pipeline.stream_plan(method)

    def __call__(self, request: Any, *, timeout: float | None = None, **kwargs: Any) -> Any:
        try:
            call = self._base._pipeline.open_stream(self._plan, timeout)
        except LocalFailure as failure:
            raise _error(failure) from None
        try:
            rpc = self._inner(request, timeout=call.timeout, **kwargs)
        except BaseException:
            call.finish(CANCELLED)
            raise
        _watch(call, rpc, self._base._watchers)
        return rpc


class ResilientAioChannel:
    """A grpc.aio channel whose calls run the pipeline without grpc.aio's interceptor layer
    (a task per call; it costs more than the pipeline).

    Unary calls return a coroutine: `await stub.M(request)` works, the call object API
    (`stub.M(request).initial_metadata()`) does not; use `aio_interceptors` where it must.
    """

    def __init__(self, channel: grpc.aio.Channel, pipeline: Pipeline) -> None:
        self._channel = channel
        self.pipeline = pipeline
        self._streams = _AioBase(pipeline)

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _AioUnaryUnary(
            self._channel.unary_unary(method, *args, **kwargs), self.pipeline, method
        )

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _AioStream(
            self._channel.unary_stream(method, *args, **kwargs), self._streams, method
        )

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _AioStream(
            self._channel.stream_unary(method, *args, **kwargs), self._streams, method
        )

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _AioStream(
            self._channel.stream_stream(method, *args, **kwargs), self._streams, method
        )

    def get_state(self, try_to_connect: bool = False) -> Any:
        return self._channel.get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: Any) -> None:
        await self._channel.wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self._channel.channel_ready()

    async def close(self, grace: float | None = None) -> None:
        await self._channel.close(grace)

    async def __aenter__(self) -> ResilientAioChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._channel.close(None)


def aio_channel(
    channel: grpc.aio.Channel,
    *,
    target: str,
    policy: ClientPolicy,
    listeners: Sequence[Listener] = (),
    clock: Clock = SYSTEM_CLOCK,
    rng: Rng | None = None,
    pipeline: Pipeline | None = None,
) -> ResilientAioChannel:
    """Wrap a grpc.aio channel (created without interceptors) in the pipeline for `target`."""
    if pipeline is None:
        pipeline = Pipeline(target=target, policy=policy, listeners=listeners, clock=clock, rng=rng)
    return ResilientAioChannel(channel, pipeline)
