"""The read-through cache of item reads in Redis, keyed by a generation that stock changes bump."""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

_log = logging.getLogger(__name__)

CACHE_NAMESPACE = "inventory:cache"

#: Reads the cache generation and the entry cached under it in one atomic step.
#: KEYS[1]  the generation counter, e.g. ``inventory:cache:gen``
#: ARGV[1]  the cache key prefix, e.g. ``inventory:cache``
#: ARGV[2]  the entry, e.g. ``item:SKU-0001`` (key = ARGV[1]:<generation>:ARGV[2])
#: ARGV[3]  a random start for the counter when it is missing (evicted, or Redis wiped): never
#:          restarting from a fixed number means a lost counter cannot revive stale entries
#: returns  ``{generation, cached value or nil}``
#: The entry key is derived from the generation inside the script, so it is not declared in
#: KEYS: fine on the single Redis of this mesh, not on Redis Cluster.
CACHE_READ = """
local generation = redis.call('GET', KEYS[1])
if not generation then
  generation = ARGV[3]
  redis.call('SET', KEYS[1], generation)
end
return {generation, redis.call('GET', ARGV[1] .. ':' .. generation .. ':' .. ARGV[2])}
"""

#: Moves the cache to a new generation: entries cached under older ones are never read again
#: (they expire by TTL).
#: KEYS[1]  the generation counter
#: ARGV[1]  a random start for the counter when it is missing (as in CACHE_READ)
#: returns  the new generation
CACHE_BUMP = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('INCR', KEYS[1])
end
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1]
"""


def _random_generation() -> str:
    # 48 bits: random enough to never meet an old generation, far from INCR's 2**63 limit.
    return str(secrets.randbits(48))


class ItemCache:
    """Generation-keyed read-through cache; Redis failures degrade to uncached reads.

    Why it is race-free: a reader takes the generation *before* it reads SQLite, and a
    writer bumps it *after* its transaction commits. A reader that read SQLite before a
    change can only store its value under the old generation, which no reader uses once
    the bump is done.

    A failed Redis call starts a back-off of ``backoff_s`` during which Redis is not
    tried at all, so a dead Redis costs one timeout, not one per call. Bumps that could
    not be made are owed, and paid before the cache is read again.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        ttl_s: int,
        backoff_s: float,
        clock: Callable[[], float] = time.monotonic,
        namespace: str = CACHE_NAMESPACE,
    ) -> None:
        self._client = client
        self._ttl_s = ttl_s
        self._backoff_s = backoff_s
        self._clock = clock
        self._namespace = namespace
        self.generation_key = f"{namespace}:gen"
        self._read = client.register_script(CACHE_READ)
        self._bump = client.register_script(CACHE_BUMP)
        self._lock = threading.Lock()
        self._down_until: float | None = None
        self._changes = 0  # stock changes this process made
        self._published = 0  # changes already covered by a generation bump

    def key(self, generation: str, entry: str) -> str:
        return f"{self._namespace}:{generation}:{entry}"

    @property
    def degraded(self) -> bool:
        """True while Redis is in back-off after a failure."""
        with self._lock:
            return self._down_until is not None and self._clock() < self._down_until

    def read_through(
        self,
        entry: str,
        load: Callable[[], Any],
    ) -> Any:
        """The cached JSON value of ``entry``, else ``load()`` (cached unless it is None)."""
        generation: str | None = None
        if self._publish():
            try:
                raw_generation, cached = self._read(
                    keys=[self.generation_key],
                    args=[self._namespace, entry, _random_generation()],
                )
                generation = raw_generation.decode()
                self._recovered()
                if cached is not None:
                    return json.loads(cached)
            except redis.RedisError as error:
                self._failed(error)
                generation = None
        value = load()
        if value is not None and generation is not None:
            try:
                self._client.set(
                    self.key(generation, entry),
                    json.dumps(value, separators=(",", ":")),
                    ex=self._ttl_s,
                )
            except redis.RedisError as error:
                self._failed(error)
        return value

    def invalidate(self) -> None:
        """Called after a stock change commits; if Redis is unreachable the bump is owed."""
        with self._lock:
            self._changes += 1
        self._publish()

    def _publish(self) -> bool:
        """Pays owed bumps; True when the cache may be used."""
        with self._lock:
            if self._down_until is not None and self._clock() < self._down_until:
                return False
            target = self._changes
            if target == self._published:
                return True
        try:
            self._bump(keys=[self.generation_key], args=[_random_generation()])
        except redis.RedisError as error:
            self._failed(error)
            return False
        with self._lock:
            # Every change counted up to `target` committed before this bump ran.
            self._published = max(self._published, target)
        self._recovered()
        return True

    def _failed(self, error: redis.RedisError) -> None:
        with self._lock:
            first = self._down_until is None
            self._down_until = self._clock() + self._backoff_s
        if first:
            _log.warning("redis cache unavailable, reading SQLite directly: %s", error)

    def _recovered(self) -> None:
        with self._lock:
            was_down = self._down_until is not None
            self._down_until = None
        if was_down:
            _log.info("redis cache available again")
