"""The OTLP span exporter as meshkit.tracing uses it (imported only when tracing is on)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from meshkit import _otlp_wire

_log = logging.getLogger("meshkit.tracing")

#: How long one batch may take, retries included, unless OTEL_EXPORTER_OTLP(_TRACES)_TIMEOUT
#: says otherwise. The SDK's 10 s would hold the exporting thread that long per batch, and a
#: stopping process as long, while the collector is away; a healthy one answers in ms.
DEFAULT_TIMEOUT_S = 2.0
TIMEOUT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT")

#: The SDK's loggers that write a line per failed batch (and retry) or per dropped span while
#: the collector is away; ReportingExporter says it once instead. Their errors about anything
#: else (an exporter that raised) still show.
QUIETED_LOGGERS = {
    "opentelemetry.exporter.otlp.proto.grpc.exporter": logging.CRITICAL,
    "opentelemetry.sdk._shared_internal": logging.ERROR,
}


class HashedResource(Resource):
    """A resource that works out its hash once. The OTLP encoder groups a batch's spans by
    their resource, a dict lookup per span, and Resource hashes by JSON-encoding its attributes
    each time: 6% of the order service's GIL time with every trace sampled."""

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource.attributes, resource.schema_url)
        self._hash = super().__hash__()

    def __hash__(self) -> int:
        return self._hash


class WireEncodingExporter(OTLPSpanExporter):
    """The SDK's OTLP/gRPC exporter, its requests written by meshkit._otlp_wire: the SDK's own
    encoder costs about 3 times the CPU per span (``python -m bench otlp``). ``_translate_data``
    is the exporter's one hook for the request it sends (opentelemetry-exporter-otlp-proto-grpc
    is pinned in requirements.txt; tests/meshkit/test_otlp_wire.py fails if the hook goes
    unused)."""

    def _translate_data(self, data: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
        return ExportTraceServiceRequest.FromString(_otlp_wire.encode(data))


class ReportingExporter(SpanExporter):
    """An exporter that logs once when the collector stops answering and once when it is back,
    and at exit gives up at once on a collector that is away."""

    def __init__(self, inner: SpanExporter, target: str) -> None:
        self._inner = inner
        self._target = target
        self._failing = False
        self._closing = False
        self._shut = False

    @classmethod
    def otlp(cls, target: str) -> ReportingExporter:
        """OTLP/gRPC to ``target`` (http:// is plaintext), the SDK's noisy loggers quieted."""
        for name, level in QUIETED_LOGGERS.items():
            logging.getLogger(name).setLevel(level)
        timeout = None if any(os.environ.get(var) for var in TIMEOUT_VARS) else DEFAULT_TIMEOUT_S
        return cls(WireEncodingExporter(endpoint=target, timeout=timeout), target)

    @property
    def failing(self) -> bool:
        """The last export failed."""
        return self._failing

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._closing and self._failing:
            return SpanExportResult.FAILURE  # stopping: a collector that was away costs no wait
        result = self._inner.export(spans)
        failing = result is not SpanExportResult.SUCCESS
        if failing != self._failing:
            self._failing = failing
            if failing:
                _log.warning(
                    "trace export to %s failed; spans are dropped until it answers", self._target
                )
            else:
                _log.info("trace export to %s works again", self._target)
        return result

    def closing(self) -> None:
        """The process is stopping: a collector that is away gets no more retries."""
        self._closing = True
        if self._failing:
            self.shutdown()  # ends the backoff of an export in progress at once

    def shutdown(self) -> None:
        if not self._shut:
            self._shut = True
            self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._inner.force_flush(timeout_millis)
