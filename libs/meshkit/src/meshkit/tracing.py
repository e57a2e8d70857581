"""OpenTelemetry traces for a service, configured by the standard ``OTEL_*`` variables.

:func:`start` is off (returns None, installs nothing) unless ``OTEL_EXPORTER_OTLP_ENDPOINT``
(or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set, so a mesh without a collector pays for
neither the SDK's import (~18 MiB of RSS per process here) nor a span. When on, spans go
through a BatchSpanProcessor, whose queue is bounded (``OTEL_BSP_MAX_QUEUE_SIZE``, 2048): a
collector that is away costs dropped spans and one log line, never a slower call or a growing
heap. The sampler is the SDK's from ``OTEL_TRACES_SAMPLER``/``_ARG`` (default: parent-based,
always on), so a traceparent's sampled flag decides for every hop after the first.

What is traced once :func:`start` (or :meth:`Tracing.activate`) ran: every server built by
``meshkit.server.build_server`` (health and reflection excepted), the calls of a
:func:`pipeline` (a span per logical call, and under it a CLIENT span per attempt, whose
context the request carries through a channel passed through :func:`instrument_channel`),
every Redis command, and what code wraps in :func:`span` (SQLite write transactions,
saga steps). The edge answers every traced request with its trace id in the ``x-trace-id``
header (meshctl.envoy_tracing).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace

import resilience

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

    from meshkit._trace_export import ReportingExporter

_log = logging.getLogger(__name__)

#: Response header (initial metadata) in which the edge answers with the trace id, so
#: ``grpcurl -v`` shows it.
TRACE_ID_HEADER = "x-trace-id"
ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
#: The services a server answers but does not trace: Envoy's health checks and grpcurl's
#: reflection would otherwise be most of the spans.
UNTRACED_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection")
#: gRPC codes that are the server's fault: only these mark a SERVER span ERROR (OTel's rpc
#: conventions; the grpc instrumentation uses the same set).
SERVER_FAULTS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
# OTel's rpc semantic conventions.
_RPC_SYSTEM = "rpc.system"
_RPC_SERVICE = "rpc.service"
_RPC_METHOD = "rpc.method"
_RPC_GRPC_STATUS_CODE = "rpc.grpc.status_code"

T = TypeVar("T")


def endpoint(env: Mapping[str, str] = os.environ) -> str | None:
    """Where spans go, or None when tracing is off (no endpoint, or OTEL_SDK_DISABLED)."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    return next((env[var].strip() for var in ENDPOINT_VARS if env.get(var, "").strip()), None)


class Tracing:
    """A tracer provider and what this process instruments with it."""

    def __init__(self, provider: TracerProvider, exporter: ReportingExporter | None = None) -> None:
        self.provider = provider
        self._exporter = exporter
        self.tracer = provider.get_tracer("meshkit")
        self._redis: Any = None

    def activate(self) -> Tracing:
        """Makes this the process's tracing: servers, channels, Redis and :func:`span` use it."""
        from opentelemetry.instrumentation.redis import RedisInstrumentor

        global _active
        if _active is not None and _active is not self:
            _active.deactivate()
        _active = self
        self._redis = RedisInstrumentor()
        self._redis.instrument(tracer_provider=self.provider)
        return self

    def deactivate(self) -> None:
        """Stops instrumenting (spans already ended are still exported)."""
        global _active
        if self._redis is not None:
            self._redis.uninstrument()
            self._redis = None
        if _active is self:
            _active = None

    def server_interceptors(self) -> list[grpc.ServerInterceptor]:
        """The SERVER span of every traced call (outermost)."""
        return [ServerSpanInterceptor(self.tracer)]

    def instrument_channel(self, channel: grpc.Channel) -> grpc.Channel:
        """``channel`` with the current trace context (``traceparent``) on every call."""
        from resilience.otel import propagating

        return propagating(channel)

    def shutdown(self) -> None:
        """Exports what is queued (unless the collector is known to be away) and stops."""
        self.deactivate()
        if self._exporter is not None:
            self._exporter.closing()
        self.provider.shutdown()


_active: Tracing | None = None


def configure(service: str, *, version: str | None = None) -> Tracing | None:
    """Tracing from the ``OTEL_*`` variables, not yet active; None when no endpoint is set.

    ``service`` and ``version`` are the resource's defaults: ``OTEL_SERVICE_NAME`` and
    ``OTEL_RESOURCE_ATTRIBUTES`` override them, as the OTel specification has it.
    """
    target = endpoint()
    if target is None:
        return None
    from opentelemetry.sdk.resources import (
        SERVICE_NAME,
        SERVICE_VERSION,
        OTELResourceDetector,
        Resource,
    )
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from meshkit._trace_export import HashedResource, ReportingExporter

    defaults: dict[str, str] = {SERVICE_NAME: service}
    if version is not None:
        defaults[SERVICE_VERSION] = version
    resource = HashedResource(Resource.create(defaults).merge(OTELResourceDetector().detect()))
    # shutdown_on_exit=False: start() registers Tracing.shutdown, which skips a collector that
    # is known to be away instead of waiting on it.
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    exporter = ReportingExporter.otlp(target)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return Tracing(provider, exporter)


def start(service: str, *, version: str | None = None) -> Tracing | None:
    """:func:`configure`, then active, the global tracer provider, and flushed at exit."""
    tracing = configure(service, version=version)
    if tracing is None:
        return None
    tracing.activate()
    trace.set_tracer_provider(tracing.provider)
    atexit.register(tracing.shutdown)
    resource = tracing.provider.resource.attributes
    _log.info("traces of %s go to %s", resource.get("service.name"), endpoint())
    return tracing


def active() -> Tracing | None:
    return _active


def server_interceptors() -> list[grpc.ServerInterceptor]:
    """What ``build_server`` puts first; empty when tracing is off."""
    return [] if _active is None else _active.server_interceptors()


def instrument_channel(channel: grpc.Channel) -> grpc.Channel:
    """``channel``, carrying the current trace context when tracing is on (wrap it before the
    resilience pipeline, so each attempt's request carries its attempt span's context)."""
    return channel if _active is None else _active.instrument_channel(channel)


def pipeline(
    *, target: str, policy: resilience.ClientPolicy, listeners: Sequence[resilience.Listener] = ()
) -> resilience.Pipeline:
    """The resilience pipeline for ``target``; traced when tracing is on (a span per logical
    call, and under it a CLIENT span per attempt)."""
    if _active is None:
        return resilience.Pipeline(target=target, policy=policy, listeners=listeners)
    from resilience.otel import TracedPipeline

    return TracedPipeline(
        target=target, policy=policy, listeners=listeners, tracer_provider=_active.provider
    )


_NO_SPAN: AbstractContextManager[trace.Span] = nullcontext(trace.INVALID_SPAN)


def span(
    name: str, attributes: Mapping[str, str | int] | None = None
) -> AbstractContextManager[trace.Span]:
    """A span around a block, current inside it; a no-op span when tracing is off or the
    current span is not sampled.

    An exception leaving the block is recorded on the span and marks it ERROR.
    """
    if _active is None or _unsampled() or _suppressed():
        return _NO_SPAN
    return _active.tracer.start_as_current_span(name, attributes=attributes)


def _suppressed() -> bool:
    from opentelemetry.instrumentation.utils import is_instrumentation_enabled

    return not is_instrumentation_enabled()


def background() -> AbstractContextManager[object]:
    """Around a thread's own loop (the outbox relay, a stream consumer, a keep-alive): its
    Redis commands and SQLite writes are not traced, so a poll is never a trace of its own
    (every XREADGROUP would be one in Jaeger). :func:`consumer_span` brings one message's
    work back into the trace that produced it."""
    if _active is None:
        return nullcontext()
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    return suppress_instrumentation()


def current_traceparent() -> str:
    """The current span as a W3C ``traceparent`` ("" outside a trace), for a message to carry
    to its consumer."""
    if _active is None or not trace.get_current_span().get_span_context().is_valid:
        return ""
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier.get("traceparent", "")


def consumer_span(
    name: str, traceparent: str, attributes: Mapping[str, str | int] | None = None
) -> AbstractContextManager[object]:
    """A CONSUMER span for one message, child of the ``traceparent`` its producer wrote, so its
    processing shows in the trace that produced it, with instrumentation on inside (even in a
    :func:`background` loop); nothing when tracing is off or that trace is not sampled."""
    if _active is None or not traceparent:
        return nullcontext()
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    # Extracted into an empty context: the loop's own carries the suppression.
    parent = TraceContextTextMapPropagator().extract(
        {"traceparent": traceparent}, context=otel_context.Context()
    )
    producer = trace.get_current_span(parent).get_span_context()
    if not (producer.is_valid and producer.trace_flags.sampled):
        return nullcontext()
    return _consumer(_active.tracer, name, parent, attributes)


@contextlib.contextmanager
def _consumer(
    tracer: trace.Tracer,
    name: str,
    parent: otel_context.Context,
    attributes: Mapping[str, str | int] | None,
) -> Iterator[trace.Span]:
    token = otel_context.attach(parent)
    try:
        with tracer.start_as_current_span(
            name, kind=trace.SpanKind.CONSUMER, attributes=attributes
        ) as span:
            yield span
    finally:
        otel_context.detach(token)


def _unsampled() -> bool:
    """The current span is one of a trace that is not sampled: every span the SDK would start
    under it is unsampled too (so says each sampler ``OTEL_TRACES_SAMPLER`` can name)."""
    context = trace.get_current_span().get_span_context()
    return context.is_valid and not context.trace_flags.sampled


def untraced(check: Callable[[], T]) -> Callable[[], T]:
    """``check`` run with instrumentation suppressed: a health probe's Redis PING every few
    seconds would otherwise be a trace of its own."""

    def run() -> T:
        if _active is None:
            return check()
        from opentelemetry.instrumentation.utils import suppress_instrumentation

        with suppress_instrumentation():
            return check()

    return run


def exemplar() -> dict[str, str] | None:
    """``{"trace_id": ...}`` for a metric observed in a sampled trace, else None: an exemplar
    should lead to a trace the collector has (an unsampled call's id leads nowhere)."""
    context = trace.get_current_span().get_span_context()
    if not context.trace_flags.sampled:
        return None
    return {"trace_id": format(context.trace_id, "032x")}


#: The rpc.* attributes of a method's SERVER spans, worked out once per method.
_MethodAttributes = Mapping[str, str]


class ServerSpanInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    """A SERVER span per unary call, child of the caller's ``traceparent``, with the call's
    final status code.

    Written here rather than taken from opentelemetry-instrumentation-grpc, whose server
    interceptor builds a new method handler, runs its filter chain, splits the method name,
    parses the peer address and builds eight attributes on every call, sampled or not, and
    wraps the servicer context: a fifth of a backend's CPU under a traced load here. This one
    works out a method's attributes once and reads the status from ``context.code()`` (which
    also sees ``abort_with_status``, which the instrumentation misses). Streams pass untraced:
    every mesh RPC is unary, and the streaming ones (health, reflection) are not traced.
    """

    def __init__(self, tracer: trace.Tracer) -> None:
        # Imported only when tracing is on: propagate loads the OTEL_PROPAGATORS entry points.
        from opentelemetry import propagate
        from opentelemetry.instrumentation.utils import suppress_instrumentation

        self._tracer = tracer
        self._extract = propagate.extract
        self._suppress = suppress_instrumentation
        self._methods: dict[str, _MethodAttributes | None] = {}

    def _attributes(self, method: str) -> _MethodAttributes | None:
        """The span attributes of ``method`` ("/package.Service/Method"), None if untraced."""
        if method in self._methods:
            return self._methods[method]
        service, _, name = method[1:].partition("/")
        attributes = (
            None
            if service in UNTRACED_SERVICES
            else {_RPC_SYSTEM: "grpc", _RPC_SERVICE: service, _RPC_METHOD: name}
        )
        self._methods[method] = attributes
        return attributes

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method: str = handler_call_details.method
        attributes = self._attributes(method)
        if attributes is None:
            return handler
        behaviour = handler.unary_unary
        tracer, extract = self._tracer, self._extract
        suppress_instrumentation = self._suppress

        def traced(request: Any, context: grpc.ServicerContext) -> Any:
            parent = extract(dict(context.invocation_metadata()))
            span = tracer.start_span(
                method, parent, kind=trace.SpanKind.SERVER, attributes=attributes
            )
            token = otel_context.attach(trace.set_span_in_context(span, parent))
            try:
                if not span.is_recording():
                    # Every span under an unsampled one is unsampled too: the instrumentation
                    # (Redis's) need not build them. The outbound calls still carry the
                    # context, so the services downstream follow the same decision.
                    with suppress_instrumentation():
                        return behaviour(request, context)
                try:
                    response = behaviour(request, context)
                except BaseException as error:
                    _ended(span, context.code(), error)
                    raise
                _ended(span, context.code())
                return response
            finally:
                otel_context.detach(token)
                span.end()

        return handler._replace(unary_unary=traced)


def _ended(
    span: trace.Span, code: grpc.StatusCode | None, error: BaseException | None = None
) -> None:
    """The call's status on its span: a code the handler set or aborted with, or, for an
    exception grpc has not seen (code None), UNKNOWN with the exception recorded."""
    if code is None:
        if error is None:
            code = grpc.StatusCode.OK
        else:
            code = grpc.StatusCode.UNKNOWN
            span.record_exception(error)
    span.set_attribute(_RPC_GRPC_STATUS_CODE, code.value[0])
    if code in SERVER_FAULTS:
        span.set_status(trace.Status(trace.StatusCode.ERROR, code.name))
