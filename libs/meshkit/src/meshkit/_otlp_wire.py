"""OTLP trace export requests written straight in protobuf's wire format.

The SDK's encoder (opentelemetry-exporter-otlp-proto-common) builds a protobuf object for every
span, attribute and value before the request is serialised: a third of the order service's GIL
time with every trace sampled, about 3 times what this costs (``python -m bench otlp``). This
writes the bytes of the same request from the same spans, grouped the same way; protobuf's C
parser turns them back into the request object the SDK's exporter sends (a few µs for a whole
batch), so its retries, timeouts and channel stay the SDK's. tests/meshkit/test_otlp_wire.py
holds the result equal to the SDK encoder's, field by field, for every kind of value and span.

No library writes OTLP this way (the SDK's is the only Python encoder), hence by hand. Field
numbers come from opentelemetry-proto's descriptors, never from this file.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
    KeyValueList,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import (
    ResourceSpans,
    ScopeSpans,
    Span,
    SpanFlags,
    Status,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind

_log = logging.getLogger(__name__)

_WIRE_TYPES = {
    FieldDescriptor.TYPE_DOUBLE: 1,
    FieldDescriptor.TYPE_FIXED64: 1,
    FieldDescriptor.TYPE_FIXED32: 5,
    FieldDescriptor.TYPE_STRING: 2,
    FieldDescriptor.TYPE_BYTES: 2,
    FieldDescriptor.TYPE_MESSAGE: 2,
}
_SMALL_VARINTS = [bytes((n,)) for n in range(0x80)]
_INT64 = 1 << 63
_UINT64_MASK = (1 << 64) - 1
_pack_fixed64 = struct.Struct("<Q").pack
_pack_fixed32 = struct.Struct("<I").pack
_pack_double = struct.Struct("<d").pack


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _SMALL_VARINTS[n]
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _tag(message: Descriptor, field: str) -> bytes:
    """The key bytes that open ``field`` of ``message`` on the wire."""
    descriptor = message.fields_by_name[field]
    return _varint(descriptor.number << 3 | _WIRE_TYPES.get(descriptor.type, 0))


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: a string, bytes or an embedded message."""
    return tag + _varint(len(payload)) + payload


_REQUEST_RESOURCE_SPANS = _tag(ExportTraceServiceRequest.DESCRIPTOR, "resource_spans")
_RESOURCE_SPANS_RESOURCE = _tag(ResourceSpans.DESCRIPTOR, "resource")
_RESOURCE_SPANS_SCOPE_SPANS = _tag(ResourceSpans.DESCRIPTOR, "scope_spans")
_RESOURCE_SPANS_SCHEMA_URL = _tag(ResourceSpans.DESCRIPTOR, "schema_url")
_RESOURCE_ATTRIBUTES = _tag(Resource.DESCRIPTOR, "attributes")
_SCOPE_SPANS_SCOPE = _tag(ScopeSpans.DESCRIPTOR, "scope")
_SCOPE_SPANS_SPANS = _tag(ScopeSpans.DESCRIPTOR, "spans")
_SCOPE_SPANS_SCHEMA_URL = _tag(ScopeSpans.DESCRIPTOR, "schema_url")
_SCOPE_NAME = _tag(InstrumentationScope.DESCRIPTOR, "name")
_SCOPE_VERSION = _tag(InstrumentationScope.DESCRIPTOR, "version")
_SCOPE_ATTRIBUTES = _tag(InstrumentationScope.DESCRIPTOR, "attributes")
_SPAN_TRACE_ID = _tag(Span.DESCRIPTOR, "trace_id") + _varint(16)
_SPAN_SPAN_ID = _tag(Span.DESCRIPTOR, "span_id") + _varint(8)
_SPAN_TRACE_STATE = _tag(Span.DESCRIPTOR, "trace_state")
_SPAN_PARENT_SPAN_ID = _tag(Span.DESCRIPTOR, "parent_span_id") + _varint(8)
_SPAN_FLAGS = _tag(Span.DESCRIPTOR, "flags")
_SPAN_NAME = _tag(Span.DESCRIPTOR, "name")
_SPAN_KIND = _tag(Span.DESCRIPTOR, "kind")
_SPAN_START = _tag(Span.DESCRIPTOR, "start_time_unix_nano")
_SPAN_END = _tag(Span.DESCRIPTOR, "end_time_unix_nano")
_SPAN_ATTRIBUTES = _tag(Span.DESCRIPTOR, "attributes")
_SPAN_DROPPED_ATTRIBUTES = _tag(Span.DESCRIPTOR, "dropped_attributes_count")
_SPAN_EVENTS = _tag(Span.DESCRIPTOR, "events")
_SPAN_DROPPED_EVENTS = _tag(Span.DESCRIPTOR, "dropped_events_count")
_SPAN_LINKS = _tag(Span.DESCRIPTOR, "links")
_SPAN_DROPPED_LINKS = _tag(Span.DESCRIPTOR, "dropped_links_count")
_SPAN_STATUS = _tag(Span.DESCRIPTOR, "status")
_EVENT_TIME = _tag(Span.Event.DESCRIPTOR, "time_unix_nano")
_EVENT_NAME = _tag(Span.Event.DESCRIPTOR, "name")
_EVENT_ATTRIBUTES = _tag(Span.Event.DESCRIPTOR, "attributes")
_EVENT_DROPPED_ATTRIBUTES = _tag(Span.Event.DESCRIPTOR, "dropped_attributes_count")
_LINK_TRACE_ID = _tag(Span.Link.DESCRIPTOR, "trace_id") + _varint(16)
_LINK_SPAN_ID = _tag(Span.Link.DESCRIPTOR, "span_id") + _varint(8)
_LINK_ATTRIBUTES = _tag(Span.Link.DESCRIPTOR, "attributes")
_LINK_DROPPED_ATTRIBUTES = _tag(Span.Link.DESCRIPTOR, "dropped_attributes_count")
_LINK_FLAGS = _tag(Span.Link.DESCRIPTOR, "flags")
_STATUS_MESSAGE = _tag(Status.DESCRIPTOR, "message")
_STATUS_CODE = _tag(Status.DESCRIPTOR, "code")
_KEY_VALUE_KEY = _tag(KeyValue.DESCRIPTOR, "key")
_KEY_VALUE_VALUE = _tag(KeyValue.DESCRIPTOR, "value")
_ANY_STRING = _tag(AnyValue.DESCRIPTOR, "string_value")
_ANY_BOOL = _tag(AnyValue.DESCRIPTOR, "bool_value")
_ANY_INT = _tag(AnyValue.DESCRIPTOR, "int_value")
_ANY_DOUBLE = _tag(AnyValue.DESCRIPTOR, "double_value")
_ANY_ARRAY = _tag(AnyValue.DESCRIPTOR, "array_value")
_ANY_KVLIST = _tag(AnyValue.DESCRIPTOR, "kvlist_value")
_ANY_BYTES = _tag(AnyValue.DESCRIPTOR, "bytes_value")
_ARRAY_VALUES = _tag(ArrayValue.DESCRIPTOR, "values")
_KVLIST_VALUES = _tag(KeyValueList.DESCRIPTOR, "values")
_ANY_TRUE = _ANY_BOOL + b"\x01"
_ANY_FALSE = _ANY_BOOL + b"\x00"

_KINDS = {
    SpanKind.INTERNAL: _SPAN_KIND + _varint(Span.SpanKind.SPAN_KIND_INTERNAL),
    SpanKind.SERVER: _SPAN_KIND + _varint(Span.SpanKind.SPAN_KIND_SERVER),
    SpanKind.CLIENT: _SPAN_KIND + _varint(Span.SpanKind.SPAN_KIND_CLIENT),
    SpanKind.PRODUCER: _SPAN_KIND + _varint(Span.SpanKind.SPAN_KIND_PRODUCER),
    SpanKind.CONSUMER: _SPAN_KIND + _varint(Span.SpanKind.SPAN_KIND_CONSUMER),
}
_LOCAL_PARENT_FLAGS = _SPAN_FLAGS + _pack_fixed32(SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK)
_REMOTE_PARENT_FLAGS = _SPAN_FLAGS + _pack_fixed32(
    SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK | SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
)


def _value(value: Any) -> bytes:
    """An AnyValue's fields; raises on what the SDK's encoder refuses too."""
    kind = type(value)
    if kind is str:
        return _field(_ANY_STRING, value.encode())
    if kind is bool:
        return _ANY_TRUE if value else _ANY_FALSE
    if kind is int:
        return _ANY_INT + _varint(_int64(value))
    if kind is float:
        return _ANY_DOUBLE + _pack_double(value)
    return _other_value(value)


def _other_value(value: Any) -> bytes:
    # Subclasses and containers, in the SDK encoder's order of checks.
    if value is None:
        return b""
    if isinstance(value, bool):
        return _ANY_TRUE if value else _ANY_FALSE
    if isinstance(value, str):
        return _field(_ANY_STRING, value.encode())
    if isinstance(value, int):
        return _ANY_INT + _varint(_int64(value))
    if isinstance(value, float):
        return _ANY_DOUBLE + _pack_double(value)
    if isinstance(value, bytes):
        return _field(_ANY_BYTES, value)
    if isinstance(value, Sequence):
        return _field(_ANY_ARRAY, b"".join(_field(_ARRAY_VALUES, _value(v)) for v in value))
    if isinstance(value, Mapping):
        pairs = b"".join(_field(_KVLIST_VALUES, _key_value(str(k), v)) for k, v in value.items())
        return _field(_ANY_KVLIST, pairs)
    raise TypeError(f"invalid type {type(value).__name__} of value {value!r}")


def _int64(value: int) -> int:
    if not -_INT64 <= value < _INT64:
        raise ValueError(f"{value} does not fit an int64")
    return value & _UINT64_MASK


def _key_value(key: str, value: Any) -> bytes:
    return _field(_KEY_VALUE_KEY, key.encode()) + _field(_KEY_VALUE_VALUE, _value(value))


#: Encoded attribute fields by (field, key, type, value): most attributes repeat (rpc.method,
#: db.system, a status code), so most are written once. Emptied when full, so ids (order.id)
#: cannot grow it. Only these types: equal values of them encode alike (not so for floats,
#: 0.0 == -0.0, nor for tuples, (1,) == (True,)).
_KEY_VALUES: dict[tuple[bytes, str, type, Any], bytes] = {}
_KEY_VALUES_MAX = 4096
_CACHED_TYPES = frozenset({str, int, bool})


def _attributes(tag: bytes, attributes: Mapping[str, Any] | None) -> bytes:
    if not attributes:
        return b""
    encoded = []
    cache = _KEY_VALUES
    for key, value in attributes.items():
        kind = type(value)
        cached = (tag, key, kind, value) if kind in _CACHED_TYPES else None
        pair = None if cached is None else cache.get(cached)
        if pair is None:
            try:
                pair = _field(tag, _key_value(key, value))
            except Exception:  # as the SDK's encoder: one bad attribute, not the batch
                _log.exception("span attribute %s left out of the export", key)
                continue
            if cached is not None:
                if len(cache) >= _KEY_VALUES_MAX:
                    cache.clear()
                cache[cached] = pair
        encoded.append(pair)
    return b"".join(encoded)


def _span(span: ReadableSpan) -> bytes:
    context = span.context
    assert context is not None  # an ended SDK span always has one
    parent = span.parent
    parts = [
        _SPAN_TRACE_ID,
        context.trace_id.to_bytes(16, "big"),
        _SPAN_SPAN_ID,
        context.span_id.to_bytes(8, "big"),
    ]
    if context.trace_state:
        state = ",".join(f"{key}={value}" for key, value in context.trace_state.items())
        parts.append(_field(_SPAN_TRACE_STATE, state.encode()))
    if parent is not None:
        parts += (_SPAN_PARENT_SPAN_ID, parent.span_id.to_bytes(8, "big"))
    if span.name:
        parts.append(_field(_SPAN_NAME, span.name.encode()))
    parts.append(_KINDS[span.kind])
    if span.start_time:
        parts += (_SPAN_START, _pack_fixed64(span.start_time))
    if span.end_time:
        parts += (_SPAN_END, _pack_fixed64(span.end_time))
    parts.append(_attributes(_SPAN_ATTRIBUTES, span.attributes))
    if span.dropped_attributes:
        parts += (_SPAN_DROPPED_ATTRIBUTES, _varint(span.dropped_attributes))
    for event in span.events:
        fields = [_attributes(_EVENT_ATTRIBUTES, event.attributes)]
        if event.timestamp:
            fields += (_EVENT_TIME, _pack_fixed64(event.timestamp))
        if event.name:
            fields.append(_field(_EVENT_NAME, event.name.encode()))
        if event.dropped_attributes:
            fields += (_EVENT_DROPPED_ATTRIBUTES, _varint(event.dropped_attributes))
        parts.append(_field(_SPAN_EVENTS, b"".join(fields)))
    if span.dropped_events:
        parts += (_SPAN_DROPPED_EVENTS, _varint(span.dropped_events))
    for link in span.links:
        fields = [
            _LINK_TRACE_ID,
            link.context.trace_id.to_bytes(16, "big"),
            _LINK_SPAN_ID,
            link.context.span_id.to_bytes(8, "big"),
            _attributes(_LINK_ATTRIBUTES, link.attributes),
            _LINK_FLAGS,
            _pack_fixed32(_flags(link.context.is_remote)),
        ]
        if link.dropped_attributes:
            fields += (_LINK_DROPPED_ATTRIBUTES, _varint(link.dropped_attributes))
        parts.append(_field(_SPAN_LINKS, b"".join(fields)))
    if span.dropped_links:
        parts += (_SPAN_DROPPED_LINKS, _varint(span.dropped_links))
    status = span.status
    if status is not None:
        code = status.status_code.value
        fields = [_STATUS_CODE + _varint(code)] if code else []
        if status.description:
            fields.append(_field(_STATUS_MESSAGE, status.description.encode()))
        parts.append(_field(_SPAN_STATUS, b"".join(fields)))
    parts.append(
        _REMOTE_PARENT_FLAGS if parent is not None and parent.is_remote else _LOCAL_PARENT_FLAGS
    )
    return b"".join(parts)


def _flags(remote: bool) -> int:
    flags = SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
    return flags | SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK if remote else flags


def _scope(scope: Any) -> bytes:
    if scope is None:
        return b""
    parts = [_field(_SCOPE_NAME, scope.name.encode())] if scope.name else []
    if scope.version:
        parts.append(_field(_SCOPE_VERSION, scope.version.encode()))
    parts.append(_attributes(_SCOPE_ATTRIBUTES, scope.attributes))
    return b"".join(parts)


def encode(spans: Sequence[ReadableSpan]) -> bytes:
    """The serialised ExportTraceServiceRequest that the SDK's ``encode_spans(spans)`` is."""
    # Grouped by resource, then by instrumentation scope, in first-seen order, as the SDK does.
    grouped: dict[Any, dict[Any, list[bytes]]] = {}
    for span in spans:
        scope = span.instrumentation_scope or None
        grouped.setdefault(span.resource, {}).setdefault(scope, []).append(
            _field(_SCOPE_SPANS_SPANS, _span(span))
        )
    request = []
    for resource, scopes in grouped.items():
        parts = [
            _field(_RESOURCE_SPANS_RESOURCE, _attributes(_RESOURCE_ATTRIBUTES, resource.attributes))
        ]
        for scope, encoded in scopes.items():
            scope_spans = [_field(_SCOPE_SPANS_SCOPE, _scope(scope)), *encoded]
            if scope is not None and scope.schema_url:
                scope_spans.append(_field(_SCOPE_SPANS_SCHEMA_URL, scope.schema_url.encode()))
            parts.append(_field(_RESOURCE_SPANS_SCOPE_SPANS, b"".join(scope_spans)))
        if resource.schema_url:
            parts.append(_field(_RESOURCE_SPANS_SCHEMA_URL, resource.schema_url.encode()))
        request.append(_field(_REQUEST_RESOURCE_SPANS, b"".join(parts)))
    return b"".join(request)


def export_request(spans: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
    """``encode_spans(spans)``, built from :func:`encode`'s bytes by protobuf's C parser."""
    return ExportTraceServiceRequest.FromString(encode(spans))
