"""A Locust user for gRPC: every call it makes is one entry in Locust's statistics.

Locust's own gRPC example wraps the channel in a grpc-interceptor ClientInterceptor; here a
call is reported by the user instead, because what counts as a failure is the caller's to say
(an order FAILED for a declined card is the right answer; a retried request_id answered with
another order is wrong though the RPC succeeded), and an interceptor sees only the status.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import grpc
import grpc.experimental.gevent as grpc_gevent
import locust

from meshkit.errors import PUSHBACK_HEADER

# Locust (imported first, by its command line) has patched the standard library for gevent;
# grpcio must then run its completion queue on gevent too, before the first channel exists,
# or a call blocks every user of the process.
grpc_gevent.init_gevent()

Response = TypeVar("Response")
#: Says what is wrong with an answer, or None when it is what the task expected.
Check = Callable[[Any], str | None]

REQUEST_TYPE = "grpc"


class UnexpectedAnswer(Exception):
    """The call succeeded, but its answer is not the one the task expected."""


class RpcFailed(Exception):
    """The call ended with a status other than OK: its code and message."""


class GrpcUser(locust.User):
    """A user with one channel to ``host`` (host:port, plaintext), shared by every user of the
    process: users are greenlets of one process, and one HTTP/2 connection carries them all."""

    abstract = True
    _channels: ClassVar[dict[str, grpc.Channel]] = {}

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        if not self.host:
            raise locust.exception.LocustError("set the edge as host:port (--host)")
        if self.host not in GrpcUser._channels:
            GrpcUser._channels[self.host] = grpc.insecure_channel(self.host)
        self.channel = GrpcUser._channels[self.host]

    def call(
        self,
        name: str,
        method: Callable[..., Response],
        request: Any,
        *,
        timeout: float,
        check: Check | None = None,
    ) -> Response | None:
        """``method(request)``, reported to Locust as ``name``; the answer, or None when the
        call failed or ``check`` found the answer wrong. A refusal with a pushback is waited
        out before the user's next task, as a well-behaved client would."""
        started = time.perf_counter()
        response: Response | None = None
        error: Exception | None = None
        try:
            response = method(request, timeout=timeout)
        except grpc.RpcError as rpc_error:
            error = rpc_error
        elapsed_ms = (time.perf_counter() - started) * 1000
        if error is None and check is not None:
            problem = check(response)
            if problem is not None:
                error = UnexpectedAnswer(problem)
        self.environment.events.request.fire(
            request_type=REQUEST_TYPE,
            name=name,
            response_time=elapsed_ms,
            response_length=response.ByteSize() if response is not None else 0,  # type: ignore[attr-defined]
            response=response,
            context=self.context(),
            exception=_described(error) if isinstance(error, grpc.RpcError) else error,
        )
        if isinstance(error, grpc.Call):
            pushback = dict(error.trailing_metadata() or ()).get(PUSHBACK_HEADER)
            if pushback is not None:
                time.sleep(int(pushback) / 1000)
        return None if error is not None else response


def _described(error: grpc.RpcError) -> Exception:
    """The status code and message, which Locust's failure table groups by (the RpcError's own
    text holds the peer's address and a timestamp, so no two would group)."""
    if isinstance(error, grpc.Call):
        return RpcFailed(f"{error.code().name}: {error.details()}")
    return RpcFailed(repr(error))
