"""One way to build a Redis client: short timeouts so a sick Redis fails fast.

Import this module before anything else imports redis (each service's package does, first
thing): redis-py 8 tries to import OpenTelemetry's metrics SDK whenever it is installed, for an
observability feature (``redis.observability``) this mesh never turns on, and with it the SDK's
resources and psutil: 2.3-2.7 MiB of RSS in each of order, inventory and notification. The SDK
is hidden for that one import only, so redis-py takes its "OpenTelemetry is not installed"
branch (its observability cannot be turned on then), and whatever imports the SDK later loads
it as usual: meshkit.tracing's OTLP exporter does, when tracing is on. The trick is the one
resilience._breaker plays on pybreaker; tests/meshkit/test_redis_client.py fails when it stops
working or breaks redis-py.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

#: What redis-py imports for its own OpenTelemetry metrics, and we never use.
UNUSED_BY_REDIS = "opentelemetry.sdk.metrics"


@contextlib.contextmanager
def _hidden(module: str) -> Iterator[None]:
    """Imports within find ``module`` not importable, unless it is loaded already."""
    if module in sys.modules:
        yield
        return
    sys.modules[module] = None  # type: ignore[assignment]  # how sys.modules says "not importable"
    try:
        yield
    finally:
        del sys.modules[module]


with _hidden(UNUSED_BY_REDIS):
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

SOCKET_TIMEOUT_S = 0.5
CONNECT_TIMEOUT_S = 0.5


def connect(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        health_check_interval=30,
        decode_responses=False,
    )


def connect_unretried(
    url: str, *, timeout_s: float, connect_timeout_s: float = CONNECT_TIMEOUT_S
) -> redis.Redis:
    """A client redis-py never retries a call of (by default it retries a timeout 3 times), for
    callers that decide themselves when Redis is worth another try (a breaker, a backoff), or
    whose calls wait on purpose (a blocked stream read: ``timeout_s`` past its block)."""
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=connect_timeout_s,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=30,
    )
