"""OpenTelemetry traces of the pipeline (`pip install resilience[otel]`): a span per logical
call, and under it one CLIENT span per attempt, whose context the request carries.

    call span  /pkg.Service/Method            INTERNAL; rpc.*, final rpc.grpc.status_code,
    |                                         resilience.attempts, resilience.outcome, and events:
    |                                         retry_scheduled, retry_budget_exhausted,
    |                                         breaker_rejected, bulkhead_rejected,
    |                                         deadline_exhausted, breaker_state_changed
    +- /pkg.Service/Method attempt 1          CLIENT; rpc.*, resilience.attempt,
    |                                         rpc.grpc.status_code
    +- /pkg.Service/Method attempt 2          ... and resilience.backoff_s, the wait before it
       +- (the server's span)                 through the traceparent the attempt sent

Each attempt span is the current span while its attempt is sent, and the channel under the
pipeline, wrapped by `propagating`, writes the current span's context into the call's metadata
(``traceparent``): so the server's span is the attempt's child. The attempt span is the one
CLIENT span of the request on the wire, the OTel rpc conventions' span: a grpc client
instrumentation underneath would add a second span for the same attempt. The call span is
INTERNAL for the same reason: tools that pair a CLIENT span with its server's (service graphs)
then count each request once. A call the pipeline
refuses (breaker open, bulkhead full, no time left) has no attempt span and reaches no server:
its call span holds the event that says why.

A call made under a span that is not sampled records nothing (every sampler the SDK configures
from ``OTEL_TRACES_SAMPLER`` leaves a child of an unsampled span unsampled) and runs as an
untraced `Pipeline` would; its request still carries the unsampled context, so the services
downstream follow the same decision.

Only this module imports opentelemetry (the API alone); the policy core does not. Streams are
not traced here (they are one attempt), but `propagating` passes their context on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider

from ._call import Plan
from ._call import Status as AttemptStatus
from ._clock import SYSTEM_CLOCK, Clock, Rng
from ._codes import OK
from ._errors import LocalFailure
from ._events import (
    OUTCOME_SUCCESS,
    BreakerRejected,
    BreakerStateChanged,
    BulkheadRejected,
    CallEnded,
    CallSite,
    DeadlineExceededLocally,
    Event,
    Listener,
    RetryBudgetExhausted,
    RetryScheduled,
)
from ._pipeline import Adapter, AsyncAdapter, Pipeline
from ._policy import ClientPolicy

__all__ = [
    "ATTEMPT",
    "ATTEMPTS",
    "BACKOFF",
    "EVENT_BREAKER_REJECTED",
    "EVENT_BREAKER_STATE_CHANGED",
    "EVENT_BULKHEAD_REJECTED",
    "EVENT_DEADLINE_EXHAUSTED",
    "EVENT_RETRY_BUDGET_EXHAUSTED",
    "EVENT_RETRY_SCHEDULED",
    "OUTCOME",
    "PropagatingChannel",
    "TracedPipeline",
    "propagating",
]

# Semantic-convention attributes (OTel rpc conventions).
RPC_SYSTEM = "rpc.system"
RPC_SERVICE = "rpc.service"
RPC_METHOD = "rpc.method"
RPC_GRPC_STATUS_CODE = "rpc.grpc.status_code"
# The library's own.
TARGET = "resilience.target"
ATTEMPT = "resilience.attempt"  # numbered from 1, as in the events
ATTEMPTS = "resilience.attempts"
BACKOFF = "resilience.backoff_s"
OUTCOME = "resilience.outcome"  # CallEnded.outcome
DELAY = "resilience.delay_s"
PUSHBACK = "resilience.pushback"
TOKENS = "resilience.tokens"
BREAKER_STATE = "resilience.breaker.state"
PROBE_IN = "resilience.breaker.probe_in_s"
LIMIT = "resilience.bulkhead.limit"
REMAINING = "resilience.remaining_s"

EVENT_RETRY_SCHEDULED = "retry_scheduled"
EVENT_RETRY_BUDGET_EXHAUSTED = "retry_budget_exhausted"
EVENT_BREAKER_REJECTED = "breaker_rejected"
EVENT_BULKHEAD_REJECTED = "bulkhead_rejected"
EVENT_DEADLINE_EXHAUSTED = "deadline_exhausted"
EVENT_BREAKER_STATE_CHANGED = "breaker_state_changed"

#: gRPC status numbers by name (rpc.grpc.status_code is the number), without importing grpc.
CODE_NUMBERS = {
    name: number
    for number, name in enumerate(
        (
            "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
            "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
            "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
            "UNAUTHENTICATED",
        )
    )
}  # fmt: skip

Ctx = TypeVar("Ctx")
R = TypeVar("R")


@dataclass(slots=True)
class _Call:
    """The call being traced in this context: its span, and the wait before the next attempt."""

    span: Span
    backoff: float | None = None


_CURRENT: ContextVar[_Call | None] = ContextVar("resilience_traced_call", default=None)


@dataclass(frozen=True, slots=True)
class _SiteSpans:
    """What a method's spans start with, worked out once per call site."""

    method: str  # the call span's name
    call: dict[str, str]  # the call span's attributes
    rpc: dict[str, str]  # every attempt span's
    first_attempt: dict[str, str | int]  # attempt 1's, which has no backoff
    first_name: str  # attempt 1's name


def _site_spans(site: CallSite) -> _SiteSpans:
    rpc = {RPC_SYSTEM: "grpc", RPC_SERVICE: site.service, RPC_METHOD: site.name}
    return _SiteSpans(
        method=site.method,
        call={**rpc, TARGET: site.target},
        rpc=rpc,
        first_attempt={**rpc, ATTEMPT: 1},
        first_name=f"{site.method} attempt 1",
    )


class TracedPipeline(Pipeline):
    """A `Pipeline` whose unary calls are traced (see the module docstring); otherwise the same.

    `tracer_provider` defaults to the global one. Wrap the channel it runs on in
    `propagating`, so each attempt's request carries the attempt span's context.
    """

    def __init__(
        self,
        *,
        target: str,
        policy: ClientPolicy,
        listeners: Sequence[Listener] = (),
        clock: Clock = SYSTEM_CLOCK,
        rng: Rng | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        super().__init__(
            target=target,
            policy=policy,
            listeners=(*listeners, _SpanEvents()),
            clock=clock,
            rng=rng,
        )
        self._tracer = trace.get_tracer("resilience", tracer_provider=tracer_provider)
        self._sites: dict[CallSite, _SiteSpans] = {}

    def _spans(self, plan: Plan) -> _SiteSpans:
        found = self._sites.get(plan.site)
        if found is None:
            found = self._sites[plan.site] = _site_spans(plan.site)
        return found

    def run(
        self, plan: Plan, caller_timeout: float | None, adapter: Adapter[Ctx, R], ctx: Ctx
    ) -> R:
        if _unsampled():
            untraced: R = super().run(plan, caller_timeout, adapter, ctx)
            return untraced
        spans = self._spans(plan)
        span = self._tracer.start_span(spans.method, kind=SpanKind.INTERNAL, attributes=spans.call)
        call = _Call(span)
        context_token = otel_context.attach(trace.set_span_in_context(span))
        call_token = _CURRENT.set(call)
        try:
            attempts = _Attempts(self, spans, adapter, call)
            result: R = super().run(plan, caller_timeout, attempts, ctx)
            return result
        except BaseException as error:
            _failed(span, error)
            raise
        finally:
            _CURRENT.reset(call_token)
            otel_context.detach(context_token)
            span.end()

    async def run_async(
        self, plan: Plan, caller_timeout: float | None, adapter: AsyncAdapter[Ctx, R], ctx: Ctx
    ) -> R:
        if _unsampled():
            untraced: R = await super().run_async(plan, caller_timeout, adapter, ctx)
            return untraced
        spans = self._spans(plan)
        span = self._tracer.start_span(spans.method, kind=SpanKind.INTERNAL, attributes=spans.call)
        call = _Call(span)
        context_token = otel_context.attach(trace.set_span_in_context(span))
        call_token = _CURRENT.set(call)
        try:
            attempts = _AsyncAttempts(self, spans, adapter, call)
            result: R = await super().run_async(plan, caller_timeout, attempts, ctx)
            return result
        except BaseException as error:
            _failed(span, error)
            raise
        finally:
            _CURRENT.reset(call_token)
            otel_context.detach(context_token)
            span.end()

    def _attempt_span(self, spans: _SiteSpans, attempt: int, call: _Call) -> Span:
        if attempt == 1 and call.backoff is None:
            return self._tracer.start_span(
                spans.first_name, kind=SpanKind.CLIENT, attributes=spans.first_attempt
            )
        attributes: dict[str, str | int | float] = {**spans.rpc, ATTEMPT: attempt}
        if call.backoff is not None:
            attributes[BACKOFF] = call.backoff
            call.backoff = None
        name = f"{spans.method} attempt {attempt}"
        return self._tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)


def _unsampled() -> bool:
    """The current span is one of a trace that is not sampled (see the module docstring)."""
    context = trace.get_current_span().get_span_context()
    return context.is_valid and not context.trace_flags.sampled


def _failed(span: Span, error: BaseException) -> None:
    """An exception left the pipeline (the adapter's, or a cancellation): it ends the span."""
    span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, type(error).__name__))


def _attempt_ended(span: Span, status: AttemptStatus | None) -> None:
    code = OK if status is None else status[0]
    span.set_attribute(RPC_GRPC_STATUS_CODE, CODE_NUMBERS.get(code, 2))
    if status is not None:
        span.set_status(Status(StatusCode.ERROR, code))


class _Attempts:
    """The loop's adapter, with each attempt sent inside its own current span."""

    __slots__ = ("_call", "_inner", "_pipeline", "_spans")

    def __init__(
        self, pipeline: TracedPipeline, spans: _SiteSpans, inner: Adapter[Any, Any], call: _Call
    ) -> None:
        self._pipeline, self._spans, self._inner, self._call = pipeline, spans, inner, call

    def send(self, ctx: Any, timeout: float, attempt: int) -> tuple[Any, AttemptStatus | None]:
        span = self._pipeline._attempt_span(self._spans, attempt, self._call)
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            result, status = self._inner.send(ctx, timeout, attempt)
            _attempt_ended(span, status)
        except BaseException as error:
            _failed(span, error)
            raise
        finally:
            otel_context.detach(token)
            span.end()
        return result, status

    def local_error(self, ctx: Any, failure: LocalFailure) -> Any:
        return self._inner.local_error(ctx, failure)


class _AsyncAttempts:
    """`_Attempts` for grpc.aio."""

    __slots__ = ("_call", "_inner", "_pipeline", "_spans")

    def __init__(
        self,
        pipeline: TracedPipeline,
        spans: _SiteSpans,
        inner: AsyncAdapter[Any, Any],
        call: _Call,
    ) -> None:
        self._pipeline, self._spans, self._inner, self._call = pipeline, spans, inner, call

    async def send(
        self, ctx: Any, timeout: float, attempt: int
    ) -> tuple[Any, AttemptStatus | None]:
        span = self._pipeline._attempt_span(self._spans, attempt, self._call)
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            result, status = await self._inner.send(ctx, timeout, attempt)
            _attempt_ended(span, status)
        except BaseException as error:
            _failed(span, error)
            raise
        finally:
            otel_context.detach(token)
            span.end()
        return result, status

    def local_error(self, ctx: Any, failure: LocalFailure) -> Any:
        return self._inner.local_error(ctx, failure)


# -- the context on the wire --------------------------------------------------------------


def _with_context(metadata: Any) -> Any:
    """``metadata`` and the current context's headers (``traceparent``, by the global
    propagator, so ``OTEL_PROPAGATORS`` applies)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    if not carrier:
        return metadata
    return (*metadata, *carrier.items()) if metadata else tuple(carrier.items())


class _PropagatingMethod:
    """A multicallable (any call type) whose calls carry the context current when made."""

    __slots__ = ("_inner",)

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __call__(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        return self._inner(
            request, timeout, _with_context(metadata), credentials, wait_for_ready, compression
        )

    def with_call(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        return self._inner.with_call(
            request, timeout, _with_context(metadata), credentials, wait_for_ready, compression
        )

    def future(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        return self._inner.future(
            request, timeout, _with_context(metadata), credentials, wait_for_ready, compression
        )


class PropagatingChannel(grpc.Channel):  # type: ignore[misc]  # grpc bases are Any
    """A sync channel whose every call carries the trace context current when it is made;
    it makes no span. Under a `TracedPipeline` that is the attempt's span."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._channel = channel

    def unary_unary(self, *args: Any, **kwargs: Any) -> Any:
        return _PropagatingMethod(self._channel.unary_unary(*args, **kwargs))

    def unary_stream(self, *args: Any, **kwargs: Any) -> Any:
        return _PropagatingMethod(self._channel.unary_stream(*args, **kwargs))

    def stream_unary(self, *args: Any, **kwargs: Any) -> Any:
        return _PropagatingMethod(self._channel.stream_unary(*args, **kwargs))

    def stream_stream(self, *args: Any, **kwargs: Any) -> Any:
        return _PropagatingMethod(self._channel.stream_stream(*args, **kwargs))

    def subscribe(self, callback: Callable[[Any], None], try_to_connect: bool = False) -> None:
        self._channel.subscribe(callback, try_to_connect=try_to_connect)

    def unsubscribe(self, callback: Callable[[Any], None]) -> None:
        self._channel.unsubscribe(callback)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> PropagatingChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self._channel.close()


def propagating(channel: grpc.Channel) -> PropagatingChannel:
    """``channel`` with the current trace context in every call's metadata: put it under
    `resilience.intercept_channel(..., TracedPipeline(...))`."""
    return PropagatingChannel(channel)


# -- the pipeline's events on the call span ------------------------------------------------


class _SpanEvents:
    """The pipeline's events, on the span of the call they belong to."""

    def __call__(self, event: Event) -> None:
        call = _CURRENT.get()
        if call is None:
            return  # a stream's, or a breaker's change outside any traced call
        span = call.span
        match event:
            case RetryScheduled(attempt=attempt, code=code, delay=delay, pushback=pushback):
                call.backoff = delay
                span.add_event(
                    EVENT_RETRY_SCHEDULED,
                    {ATTEMPT: attempt, RPC_GRPC_STATUS_CODE: _number(code), DELAY: delay,
                     PUSHBACK: pushback},
                )  # fmt: skip
            case RetryBudgetExhausted(attempt=attempt, code=code, tokens=tokens):
                span.add_event(
                    EVENT_RETRY_BUDGET_EXHAUSTED,
                    {ATTEMPT: attempt, RPC_GRPC_STATUS_CODE: _number(code), TOKENS: tokens},
                )
            case BreakerRejected(attempt=attempt, state=state, probe_in=probe_in):
                attributes: dict[str, str | int | float] = {ATTEMPT: attempt, BREAKER_STATE: state}
                if probe_in is not None:
                    attributes[PROBE_IN] = probe_in
                span.add_event(EVENT_BREAKER_REJECTED, attributes)
            case BulkheadRejected(limit=limit):
                span.add_event(EVENT_BULKHEAD_REJECTED, {LIMIT: limit})
            case DeadlineExceededLocally(attempt=attempt, remaining=remaining):
                span.add_event(EVENT_DEADLINE_EXHAUSTED, {ATTEMPT: attempt, REMAINING: remaining})
            case BreakerStateChanged(old=old, new=new):
                span.add_event(EVENT_BREAKER_STATE_CHANGED, {"from": old, "to": new})
            case CallEnded(code=code, attempts=attempts, outcome=outcome):
                _ended(span, code, attempts, outcome)

    def call_succeeded(self, site: CallSite, start: float, duration: float, timeout: float) -> None:
        call = _CURRENT.get()
        if call is not None:
            _ended(call.span, OK, 1, OUTCOME_SUCCESS)


def _number(code: str) -> int:
    return CODE_NUMBERS.get(code, 2)  # 2: UNKNOWN


def _ended(span: Span, code: str, attempts: int, outcome: str) -> None:
    span.set_attributes({RPC_GRPC_STATUS_CODE: _number(code), ATTEMPTS: attempts, OUTCOME: outcome})
    if code != OK:
        span.set_status(Status(StatusCode.ERROR, code))
