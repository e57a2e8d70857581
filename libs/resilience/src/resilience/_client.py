"""Sync grpc wiring: `intercept_channel`, the fast way in, and `sync_interceptors`, to compose
with other interceptors. Both run `Pipeline.run`; nothing here decides anything."""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import grpc

from ._call import Status
from ._codes import CANCELLED
from ._errors import LocalFailure
from ._grpc_common import SyncCallDetails, code_name, grpc_code, has_idempotency_key, pushback
from ._pipeline import Pipeline


class LocalRpcError(grpc.RpcError, grpc.Call, grpc.Future):  # type: ignore[misc]  # grpc bases are Any
    """A call the pipeline failed without (re)sending it; raises itself like a failed RPC."""

    def __init__(self, failure: LocalFailure) -> None:
        super().__init__(failure.details)
        self._code = grpc_code(failure.code)
        self._details = failure.details
        #: Attempts sent before the refusal; 0: the callee never saw the call (`never_sent`).
        self.resilience_attempts_sent = failure.attempts_sent

    def __str__(self) -> str:
        return f"<LocalRpcError status={self._code.name} details={self._details!r}>"

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def initial_metadata(self) -> tuple[()]:
        return ()

    def trailing_metadata(self) -> tuple[()]:
        return ()

    def debug_error_string(self) -> str:
        return self._details

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> None:
        return None

    def cancel(self) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def running(self) -> bool:
        return False

    def done(self) -> bool:
        return True

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return False

    def result(self, timeout: float | None = None) -> Any:
        raise self

    def exception(self, timeout: float | None = None) -> LocalRpcError:
        return self

    def traceback(self, timeout: float | None = None) -> types.TracebackType | None:
        return None

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        fn(self)

    def __iter__(self) -> LocalRpcError:
        return self

    def __next__(self) -> Any:
        raise self


# -- one attempt through grpc ----------------------------------------------------------

_ChainCtx = tuple[Callable[[Any, Any], Any], Any, Any]  # (continuation, call details, request)
# (the channel's multicallable, request, metadata, credentials, wait_for_ready, compression)
_MethodCtx = tuple[Any, Any, Any, Any, Any, Any]


class _ChainAdapter:
    """Sends an attempt through the rest of the grpc interceptor chain."""

    __slots__ = ()

    def send(self, ctx: _ChainCtx, timeout: float, attempt: int) -> tuple[Any, Status | None]:
        continuation, d, request = ctx
        # _UnaryOutcome on success; the RpcError itself (also a Call) on failure.
        outcome = continuation(_details(d, timeout), request)
        if outcome.exception() is None:
            return outcome, None
        return outcome, _status(outcome, d.metadata, request)

    def local_error(self, ctx: _ChainCtx, failure: LocalFailure) -> Any:
        return LocalRpcError(failure)


class _MethodAdapter:
    """Sends an attempt straight to the channel's own multicallable (no interceptor layer)."""

    __slots__ = ()

    def send(self, ctx: _MethodCtx, timeout: float, attempt: int) -> tuple[Any, Status | None]:
        inner, request, metadata, credentials, wait_for_ready, compression = ctx
        try:
            response = inner(request, timeout, metadata, credentials, wait_for_ready, compression)
        except grpc.RpcError as err:
            return err, _status(err, metadata, request)
        return response, None

    def local_error(self, ctx: _MethodCtx, failure: LocalFailure) -> Any:
        return LocalRpcError(failure)


class _WithCallAdapter(_MethodAdapter):
    """`_MethodAdapter` for `.with_call()`: the response and its call."""

    __slots__ = ()

    def send(self, ctx: _MethodCtx, timeout: float, attempt: int) -> tuple[Any, Status | None]:
        inner, request, metadata, credentials, wait_for_ready, compression = ctx
        try:
            response_and_call = inner.with_call(
                request, timeout, metadata, credentials, wait_for_ready, compression
            )
        except grpc.RpcError as err:
            return err, _status(err, metadata, request)
        return response_and_call, None


_CHAIN = _ChainAdapter()
_METHOD = _MethodAdapter()
_WITH_CALL = _WithCallAdapter()


def _details(d: Any, timeout: float) -> SyncCallDetails:
    return SyncCallDetails(
        d.method, timeout, d.metadata, d.credentials, d.wait_for_ready, d.compression
    )


def _status(call: Any, metadata: Any, request: Any) -> Status:
    code, trailing = code_name(call.code()), call.trailing_metadata()
    return code, pushback(trailing), has_idempotency_key(metadata, request)


def _stream(pipeline: Pipeline, continuation: Any, d: Any, request: Any) -> Any:
    """Streams are admitted (bulkhead, deadline, breaker) but never retried: responses may
    already be consumed."""
    try:
        call = pipeline.open_stream(pipeline.stream_plan(d.method), d.timeout)
    except LocalFailure as failure:
        return LocalRpcError(failure)
    try:
        rpc = continuation(_details(d, call.timeout), request)
    except BaseException:
        call.finish(CANCELLED)
        raise
    rpc.add_done_callback(lambda done: call.finish(code_name(done.code())))
    return rpc


# -- the interceptor -------------------------------------------------------------------


class _Interceptor(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]  # grpc bases are Any
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """The pipeline for every call type: sync grpc takes one object for all four."""

    __slots__ = ("_pipeline",)

    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline

    def intercept_unary_unary(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        d, pipeline = client_call_details, self._pipeline
        return pipeline.run(pipeline.plan(d.method), d.timeout, _CHAIN, (continuation, d, request))

    def intercept_unary_stream(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        return _stream(self._pipeline, continuation, client_call_details, request)

    def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return _stream(self._pipeline, continuation, client_call_details, request_iterator)

    def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return _stream(self._pipeline, continuation, client_call_details, request_iterator)


def sync_interceptors(pipeline: Pipeline) -> list[Any]:
    """The pipeline as grpc interceptors, for `grpc.intercept_channel(channel, *...)`."""
    return [_Interceptor(pipeline)]


# -- the channel -----------------------------------------------------------------------


class _UnaryUnaryMethod(grpc.UnaryUnaryMultiCallable):  # type: ignore[misc]  # grpc bases are Any
    """A unary method of a `ResilientChannel`: the pipeline around the real multicallable."""

    __slots__ = ("_inner", "_plan", "_run", "_via_interceptor")

    def __init__(self, inner: Any, via_interceptor: Any, pipeline: Pipeline, method: str) -> None:
        self._inner = inner
        self._via_interceptor = via_interceptor
        self._plan = pipeline.plan(method)
        self._run = pipeline.run

    def __call__(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        ctx = (self._inner, request, metadata, credentials, wait_for_ready, compression)
        result = self._run(self._plan, timeout, _METHOD, ctx)
        if isinstance(result, grpc.RpcError):
            raise result
        return result

    def with_call(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        ctx = (self._inner, request, metadata, credentials, wait_for_ready, compression)
        result = self._run(self._plan, timeout, _WITH_CALL, ctx)
        if isinstance(result, grpc.RpcError):
            raise result
        return result

    def future(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        # Like any blocking grpc interceptor: the pipeline runs to the end before returning.
        return self._via_interceptor.future(
            request, timeout, metadata, credentials, wait_for_ready, compression
        )


class ResilientChannel(grpc.Channel):  # type: ignore[misc]  # grpc bases are Any
    """A sync channel whose calls run the pipeline.

    Unary calls (`stub.M(...)`, `.with_call`) run it around the channel's own multicallable,
    built once per method: grpcio's interceptor layer alone costs ~40 us of CPU per call on
    the 2-core benchmark machine, more than the whole pipeline. `.future()` and streaming call
    types go through the same pipeline as standard grpc interceptors.
    """

    def __init__(self, channel: grpc.Channel, pipeline: Pipeline) -> None:
        self._channel = channel
        self.pipeline = pipeline
        self._intercepted = grpc.intercept_channel(channel, _Interceptor(pipeline))

    def unary_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> Any:
        args = (method, request_serializer, response_deserializer, _registered_method)
        return _UnaryUnaryMethod(
            self._channel.unary_unary(*args),
            self._intercepted.unary_unary(*args),
            self.pipeline,
            method,
        )

    def unary_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> Any:
        return self._intercepted.unary_stream(
            method, request_serializer, response_deserializer, _registered_method
        )

    def stream_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> Any:
        return self._intercepted.stream_unary(
            method, request_serializer, response_deserializer, _registered_method
        )

    def stream_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> Any:
        return self._intercepted.stream_stream(
            method, request_serializer, response_deserializer, _registered_method
        )

    def subscribe(self, callback: Any, try_to_connect: bool = False) -> None:
        self._channel.subscribe(callback, try_to_connect=try_to_connect)

    def unsubscribe(self, callback: Any) -> None:
        self._channel.unsubscribe(callback)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> ResilientChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self._channel.close()


def intercept_channel(channel: grpc.Channel, pipeline: Pipeline) -> ResilientChannel:
    """Wrap a sync channel in `pipeline` (build one per target and share it between channels)."""
    return ResilientChannel(channel, pipeline)
