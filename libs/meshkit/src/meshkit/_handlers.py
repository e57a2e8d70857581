"""Wrapping a grpc method handler's behaviour, shared by meshkit's server interceptors."""

from __future__ import annotations

from collections.abc import Callable

import grpc

_BEHAVIOURS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")


def rewrap(
    handler: grpc.RpcMethodHandler, wrap: Callable[[Callable[..., object]], Callable[..., object]]
) -> grpc.RpcMethodHandler:
    """The same handler with its one behaviour wrapped (an RpcMethodHandler is a namedtuple,
    as meshkit.errors also uses it)."""
    kind = next(name for name in _BEHAVIOURS if getattr(handler, name) is not None)
    rewrapped: grpc.RpcMethodHandler = handler._replace(**{kind: wrap(getattr(handler, kind))})
    return rewrapped
