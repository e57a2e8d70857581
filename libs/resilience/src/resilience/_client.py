"""Sync grpc client interceptors: one object per call type, each running the whole pipeline."""

from __future__ import annotations

import types
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from ._clock import SYSTEM_CLOCK, Clock, Rng
from ._errors import LocalFailure
from ._events import Listener
from ._grpc_common import SyncCallDetails, code_name, grpc_code, has_idempotency_key, pushback
from ._pipeline import Pipeline, Status
from ._policy import ClientPolicy

_Ctx = tuple[Callable[[Any, Any], Any], Any, Any]  # (continuation, call details, request)


class LocalRpcError(grpc.RpcError, grpc.Call, grpc.Future):  # type: ignore[misc]  # grpc bases are Any
    """A call the pipeline failed without (re)sending it; raises itself like a failed RPC."""

    def __init__(self, failure: LocalFailure) -> None:
        super().__init__(failure.details)
        self._code = grpc_code(failure.code)
        self._details = failure.details

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


class _UnaryAdapter:
    """Sends one attempt of a unary call through the rest of the grpc interceptor chain."""

    __slots__ = ()

    def send(self, ctx: _Ctx, timeout: float, attempt: int) -> Any:
        continuation, d, request = ctx
        details = SyncCallDetails(
            d.method, timeout, d.metadata, d.credentials, d.wait_for_ready, d.compression
        )
        return continuation(details, request)

    def status(self, result: Any) -> Status | None:
        # _UnaryOutcome on success; the RpcError itself (also a Call) on failure.
        if result.exception() is None:
            return None
        return code_name(result.code()), pushback(result.trailing_metadata())

    def has_key(self, ctx: _Ctx) -> bool:
        return has_idempotency_key(ctx[1].metadata, ctx[2])

    def local_error(self, ctx: _Ctx, failure: LocalFailure) -> Any:
        return LocalRpcError(failure)


_ADAPTER = _UnaryAdapter()


class _Base:
    __slots__ = ("_pipeline", "_plan")

    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline
        self._plan = pipeline.plan

    def _stream(self, continuation: Callable[[Any, Any], Any], d: Any, request: Any) -> Any:
        """Streams are not retried (responses may already be consumed); the rest applies."""
        pipeline = self._pipeline
        plan = self._plan(d.method)
        try:
            timeout, probe, start = pipeline.open_stream(plan, d.timeout)
        except LocalFailure as failure:
            return LocalRpcError(failure)
        details = SyncCallDetails(
            d.method, timeout, d.metadata, d.credentials, d.wait_for_ready, d.compression
        )
        call = continuation(details, request)
        call.add_done_callback(
            lambda c: pipeline.close_stream(plan, probe, start, timeout, code_name(c.code()))
        )
        return call


class UnaryUnaryInterceptor(_Base, grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]  # grpc bases are Any
    """The whole pipeline for unary calls, retries included."""

    __slots__ = ()

    def intercept_unary_unary(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        d = client_call_details
        return self._pipeline.run(
            self._plan(d.method), d.timeout, _ADAPTER, (continuation, d, request)
        )


class UnaryStreamInterceptor(_Base, grpc.UnaryStreamClientInterceptor):  # type: ignore[misc]  # grpc bases are Any
    __slots__ = ()

    def intercept_unary_stream(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        return self._stream(continuation, client_call_details, request)


class StreamUnaryInterceptor(_Base, grpc.StreamUnaryClientInterceptor):  # type: ignore[misc]  # grpc bases are Any
    __slots__ = ()

    def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return self._stream(continuation, client_call_details, request_iterator)


class StreamStreamInterceptor(_Base, grpc.StreamStreamClientInterceptor):  # type: ignore[misc]  # grpc bases are Any
    __slots__ = ()

    def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return self._stream(continuation, client_call_details, request_iterator)


def interceptors(pipeline: Pipeline) -> list[Any]:
    """The four sync interceptors (one per call type) sharing `pipeline`."""
    return [
        UnaryUnaryInterceptor(pipeline),
        UnaryStreamInterceptor(pipeline),
        StreamUnaryInterceptor(pipeline),
        StreamStreamInterceptor(pipeline),
    ]


def intercept_channel(
    channel: grpc.Channel,
    *,
    target: str,
    policy: ClientPolicy,
    listeners: Sequence[Listener] = (),
    clock: Clock = SYSTEM_CLOCK,
    rng: Rng | None = None,
    pipeline: Pipeline | None = None,
) -> grpc.Channel:
    """Wrap a sync channel in the resilience pipeline for `target`.

    Pass `pipeline` to share one target's budget, breaker and bulkhead between channels;
    `target`, `policy`, `listeners`, `clock` and `rng` are then ignored.
    """
    if pipeline is None:
        pipeline = Pipeline(target=target, policy=policy, listeners=listeners, clock=clock, rng=rng)
    return grpc.intercept_channel(channel, *interceptors(pipeline))
