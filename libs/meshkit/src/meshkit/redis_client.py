"""One way to build a Redis client: short timeouts so a sick Redis fails fast."""

from __future__ import annotations

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
