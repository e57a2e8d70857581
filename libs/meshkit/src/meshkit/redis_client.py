"""One way to build a Redis client: short timeouts so a sick Redis fails fast."""

from __future__ import annotations

import redis

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
