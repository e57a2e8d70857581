"""grpc.aio wiring: `intercept_aio_channel`, the fast way in, and `aio_interceptors`, to compose
with other interceptors. Both run `Pipeline.run_async`; nothing here decides anything."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import grpc.aio

from ._call import CallState, Status
from ._codes import CANCELLED
from ._errors import LocalFailure
from ._grpc_common import code_name, grpc_code, has_idempotency_key, pushback
from ._pipeline import Pipeline


def _error(failure: LocalFailure) -> grpc.aio.AioRpcError:
    error = grpc.aio.AioRpcError(
        grpc_code(failure.code), grpc.aio.Metadata(), grpc.aio.Metadata(), failure.details
    )
    # Read by `never_sent`: grpc.aio's error is raised as is, so the mark is an attribute.
    error.resilience_attempts_sent = failure.attempts_sent
    return error


# -- one attempt through grpc.aio ------------------------------------------------------

_ChainCtx = tuple[Any, Any, Any]  # (continuation, call details, request)
# (the channel's multicallable, request, metadata, credentials, wait_for_ready, compression)
_MethodCtx = tuple[Any, Any, Any, Any, Any, Any]


class _ChainAdapter:
    """Sends an attempt through the rest of the grpc.aio interceptor chain."""

    __slots__ = ()

    async def send(self, ctx: _ChainCtx, timeout: float, attempt: int) -> tuple[Any, Status | None]:
        continuation, d, request = ctx
        call = await continuation(_details(d, timeout), request)
        try:
            code = await call.code()
        except asyncio.CancelledError:
            call.cancel()
            raise
        if code is grpc.StatusCode.OK:
            return call, None
        trailing = await call.trailing_metadata()
        return call, (code_name(code), pushback(trailing), has_idempotency_key(d.metadata, request))

    def local_error(self, ctx: _ChainCtx, failure: LocalFailure) -> Any:
        raise _error(failure)


class _MethodAdapter:
    """Sends an attempt straight to the channel's own multicallable (no interceptor task)."""

    __slots__ = ()

    async def send(
        self, ctx: _MethodCtx, timeout: float, attempt: int
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

    def local_error(self, ctx: _MethodCtx, failure: LocalFailure) -> Any:
        raise _error(failure)


_CHAIN = _ChainAdapter()
_METHOD = _MethodAdapter()


def _details(d: Any, timeout: float) -> grpc.aio.ClientCallDetails:
    return grpc.aio.ClientCallDetails(
        d.method, timeout, d.metadata, d.credentials, d.wait_for_ready
    )


def _watch(call: CallState, rpc: Any, watchers: set[asyncio.Task[None]]) -> None:
    """Account a stream's end when its status arrives, on a task kept alive until then."""

    async def watch() -> None:
        try:
            code = code_name(await rpc.code())
        except asyncio.CancelledError:
            code = CANCELLED
        call.finish(code)

    task = asyncio.ensure_future(watch())
    watchers.add(task)
    task.add_done_callback(watchers.discard)


# -- the interceptors: grpc.aio files each under one call type, so one class per type ------


class _Interceptor:
    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline
        self._watchers: set[asyncio.Task[None]] = set()

    async def _stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        """Streams are admitted (bulkhead, deadline, breaker) but never retried: responses may
        already be consumed."""
        d, pipeline = client_call_details, self._pipeline
        try:
            call = pipeline.open_stream(pipeline.stream_plan(d.method), d.timeout)
        except LocalFailure as failure:
            raise _error(failure) from None
        try:
            rpc = await continuation(_details(d, call.timeout), request)
        except BaseException:
            call.finish(CANCELLED)
            raise
        _watch(call, rpc, self._watchers)
        return rpc


class _UnaryUnaryInterceptor(_Interceptor, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]  # grpc bases are Any
    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        d, pipeline = client_call_details, self._pipeline
        return await pipeline.run_async(
            pipeline.plan(d.method), d.timeout, _CHAIN, (continuation, d, request)
        )


class _UnaryStreamInterceptor(_Interceptor, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]  # grpc bases are Any
    intercept_unary_stream = _Interceptor._stream


class _StreamUnaryInterceptor(_Interceptor, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]  # grpc bases are Any
    intercept_stream_unary = _Interceptor._stream


class _StreamStreamInterceptor(_Interceptor, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]  # grpc bases are Any
    intercept_stream_stream = _Interceptor._stream


def aio_interceptors(pipeline: Pipeline) -> list[grpc.aio.ClientInterceptor]:
    """The pipeline as grpc.aio interceptors, for `grpc.aio.*_channel(interceptors=...)`."""
    return [
        _UnaryUnaryInterceptor(pipeline),
        _UnaryStreamInterceptor(pipeline),
        _StreamUnaryInterceptor(pipeline),
        _StreamStreamInterceptor(pipeline),
    ]


# -- the channel -----------------------------------------------------------------------


class _UnaryUnaryMethod:
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
        result = await self._run(self._plan, timeout, _METHOD, ctx)
        if isinstance(result, grpc.aio.AioRpcError):
            raise result
        return result


class _StreamMethod:
    """A streaming method of a `ResilientAioChannel`: admitted like a call, never retried."""

    __slots__ = ("_inner", "_pipeline", "_plan", "_watchers")

    def __init__(
        self, inner: Any, pipeline: Pipeline, method: str, watchers: set[asyncio.Task[None]]
    ) -> None:
        self._inner = inner
        self._pipeline = pipeline
        self._plan = pipeline.stream_plan(method)
        self._watchers = watchers

    def __call__(self, request: Any, *, timeout: float | None = None, **kwargs: Any) -> Any:
        try:
            call = self._pipeline.open_stream(self._plan, timeout)
        except LocalFailure as failure:
            raise _error(failure) from None
        try:
            rpc = self._inner(request, timeout=call.timeout, **kwargs)
        except BaseException:
            call.finish(CANCELLED)
            raise
        _watch(call, rpc, self._watchers)
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
        self._watchers: set[asyncio.Task[None]] = set()

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        inner = self._channel.unary_unary(method, *args, **kwargs)
        return _UnaryUnaryMethod(inner, self.pipeline, method)

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        inner = self._channel.unary_stream(method, *args, **kwargs)
        return _StreamMethod(inner, self.pipeline, method, self._watchers)

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        inner = self._channel.stream_unary(method, *args, **kwargs)
        return _StreamMethod(inner, self.pipeline, method, self._watchers)

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        inner = self._channel.stream_stream(method, *args, **kwargs)
        return _StreamMethod(inner, self.pipeline, method, self._watchers)

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


def intercept_aio_channel(channel: grpc.aio.Channel, pipeline: Pipeline) -> ResilientAioChannel:
    """Wrap a grpc.aio channel (made without interceptors) in `pipeline` (build one per target
    and share it between channels)."""
    return ResilientAioChannel(channel, pipeline)
