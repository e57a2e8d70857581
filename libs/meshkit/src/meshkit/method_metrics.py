"""A histogram of one method's handling time whose exemplars are trace ids.

py-grpc-prometheus's ``grpc_server_handling_seconds`` cannot carry exemplars, and a second
histogram of every method of every service would double those series for the few methods
anyone follows from a latency panel to a trace. A service passes this interceptor to
``build_server(interceptors=...)`` for the method whose latency it watches, with a histogram
it owns; it runs inside the tracing interceptor, so the call's SERVER span is current.
prometheus_client writes exemplars only in the OpenMetrics format, which Prometheus asks for
when it scrapes; it keeps them with ``--enable-feature=exemplar-storage``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc
from prometheus_client import Histogram

from meshkit import tracing


class MethodDurationInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    """Observes ``method``'s handling time in ``histogram``, the call's trace id as exemplar
    when its trace is sampled; every other method passes untouched."""

    def __init__(self, method: str, histogram: Histogram) -> None:
        self._method = method
        self._histogram = histogram

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        if handler_call_details.method != self._method:
            return handler
        behaviour = handler.unary_unary
        observe = self._histogram.observe

        def timed(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            try:
                return behaviour(request, context)
            finally:
                observe(time.perf_counter() - started, tracing.exemplar())

        return handler._replace(unary_unary=timed)
