"""Small grpc helpers shared by the sync and aio interceptors."""

from __future__ import annotations

import collections
from typing import Any

import grpc

IDEMPOTENCY_KEY_HEADER = "x-idempotency-key"
IDEMPOTENCY_KEY_FIELD = "request_id"
PUSHBACK_HEADER = "grpc-retry-pushback-ms"


def code_name(code: Any) -> str:
    return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"


def grpc_code(name: str) -> grpc.StatusCode:
    return grpc.StatusCode[name]


def pushback(metadata: Any) -> str | None:
    """The server's `grpc-retry-pushback-ms` from trailing metadata, if any."""
    if not metadata:
        return None
    for key, value in metadata:
        if key == PUSHBACK_HEADER:
            return value if isinstance(value, str) else value.decode("ascii", "replace")
    return None


def has_idempotency_key(metadata: Any, request: Any) -> bool:
    """A request carries a key if its metadata has `x-idempotency-key` or the message has a
    non-empty `request_id` field (AIP-155, as the mesh protos do)."""
    if metadata:
        for key, value in metadata:
            if key == IDEMPOTENCY_KEY_HEADER and value:
                return True
    return bool(getattr(request, IDEMPOTENCY_KEY_FIELD, None))


class SyncCallDetails(
    collections.namedtuple(
        "SyncCallDetails",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,  # type: ignore[misc]  # grpc ships no types: the base is Any
):
    """New call details per attempt; the caller's are never mutated."""
