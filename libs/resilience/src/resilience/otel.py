"""OpenTelemetry traces of the pipeline (`pip install resilience[otel]`): a span per logical
call, and under it one span per attempt.

    call span  /pkg.Service/Method            CLIENT; rpc.*, final rpc.grpc.status_code,
    |                                         resilience.attempts, resilience.outcome, and events:
    |                                         retry_scheduled, retry_budget_exhausted,
    |                                         breaker_rejected, bulkhead_rejected,
    |                                         deadline_exhausted, breaker_state_changed
    +- /pkg.Service/Method attempt 1          INTERNAL; resilience.attempt, rpc.grpc.status_code
    +- /pkg.Service/Method attempt 2          ... and resilience.backoff_s, the wait before it
       +- (grpc CLIENT span) -> server        when the channel is instrumented

Each attempt span is the current span while its attempt is sent, so a grpc CLIENT span made by
an instrumented channel underneath (OTel's grpc instrumentation wraps the raw channel: one span
per attempt) is its child, and through the traceparent so is the server's span. A call the
pipeline refuses (breaker open, bulkhead full, no time left) has no attempt span and reaches no
server: its call span holds the event that says why.

Only this module imports opentelemetry (the API alone); the policy core does not. Streams are
not traced here (they are one attempt; the grpc instrumentation traces them).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

from opentelemetry import trace
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
    "TracedPipeline",
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


class TracedPipeline(Pipeline):
    """A `Pipeline` whose unary calls are traced (see the module docstring); otherwise the same.

    `tracer_provider` defaults to the global one.
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
        self._call_attributes: dict[CallSite, dict[str, str]] = {}

    def _start(self, site: CallSite) -> Any:
        attributes = self._call_attributes.get(site)
        if attributes is None:
            attributes = self._call_attributes[site] = {
                RPC_SYSTEM: "grpc",
                RPC_SERVICE: site.service,
                RPC_METHOD: site.name,
                TARGET: site.target,
            }
        return self._tracer.start_as_current_span(
            site.method, kind=SpanKind.CLIENT, attributes=attributes
        )

    def run(
        self, plan: Plan, caller_timeout: float | None, adapter: Adapter[Ctx, R], ctx: Ctx
    ) -> R:
        with self._start(plan.site) as span:
            call = _Call(span)
            token = _CURRENT.set(call)
            try:
                attempts = _Attempts(self, plan, adapter, call)
                result: R = super().run(plan, caller_timeout, attempts, ctx)
                return result
            finally:
                _CURRENT.reset(token)

    async def run_async(
        self, plan: Plan, caller_timeout: float | None, adapter: AsyncAdapter[Ctx, R], ctx: Ctx
    ) -> R:
        with self._start(plan.site) as span:
            call = _Call(span)
            token = _CURRENT.set(call)
            try:
                attempts = _AsyncAttempts(self, plan, adapter, call)
                result: R = await super().run_async(plan, caller_timeout, attempts, ctx)
                return result
            finally:
                _CURRENT.reset(token)

    def _attempt_span(self, plan: Plan, attempt: int, call: _Call) -> Any:
        attributes: dict[str, int | float] = {ATTEMPT: attempt}
        if call.backoff is not None:
            attributes[BACKOFF] = call.backoff
            call.backoff = None
        return self._tracer.start_as_current_span(
            f"{plan.site.method} attempt {attempt}", kind=SpanKind.INTERNAL, attributes=attributes
        )


def _attempt_ended(span: Span, status: AttemptStatus | None) -> None:
    code = OK if status is None else status[0]
    span.set_attribute(RPC_GRPC_STATUS_CODE, CODE_NUMBERS.get(code, 2))
    if status is not None:
        span.set_status(Status(StatusCode.ERROR, code))


class _Attempts:
    """The loop's adapter, with each attempt sent inside its own current span."""

    __slots__ = ("_call", "_inner", "_pipeline", "_plan")

    def __init__(
        self, pipeline: TracedPipeline, plan: Plan, inner: Adapter[Any, Any], call: _Call
    ) -> None:
        self._pipeline, self._plan, self._inner, self._call = pipeline, plan, inner, call

    def send(self, ctx: Any, timeout: float, attempt: int) -> tuple[Any, AttemptStatus | None]:
        with self._pipeline._attempt_span(self._plan, attempt, self._call) as span:
            result, status = self._inner.send(ctx, timeout, attempt)
            _attempt_ended(span, status)
        return result, status

    def local_error(self, ctx: Any, failure: LocalFailure) -> Any:
        return self._inner.local_error(ctx, failure)


class _AsyncAttempts:
    """`_Attempts` for grpc.aio."""

    __slots__ = ("_call", "_inner", "_pipeline", "_plan")

    def __init__(
        self, pipeline: TracedPipeline, plan: Plan, inner: AsyncAdapter[Any, Any], call: _Call
    ) -> None:
        self._pipeline, self._plan, self._inner, self._call = pipeline, plan, inner, call

    async def send(
        self, ctx: Any, timeout: float, attempt: int
    ) -> tuple[Any, AttemptStatus | None]:
        with self._pipeline._attempt_span(self._plan, attempt, self._call) as span:
            result, status = await self._inner.send(ctx, timeout, attempt)
            _attempt_ended(span, status)
        return result, status

    def local_error(self, ctx: Any, failure: LocalFailure) -> Any:
        return self._inner.local_error(ctx, failure)


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
