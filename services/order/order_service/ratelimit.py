"""Per-customer rate limits on new orders: GCRA in one Redis script, on Redis's clock.

GCRA (the generic cell rate algorithm, as redis-cell and Brandur Leach's "Rate limiting,
cells, and GCRA" use it) keeps one number per customer, the theoretical arrival time (TAT):
when the customer's orders so far would have been spread out at the steady rate. An order is
let in while the TAT is at most ``burst - 1`` intervals ahead of now, and pushes it on by one
interval; a refused order is told exactly when the next one fits, and costs nothing. Unlike a
fixed window it never lets twice the rate through at a window's edge, and unlike a token
bucket it needs no refill: one ``GET`` and one ``SET`` with a TTL per call.

The script reads the time from Redis (``TIME``), not from the caller, so order replicas with
skewed clocks share one schedule per customer; a key expires when its TAT is reached, when
the customer is back at a full burst, so an idle customer costs no memory.

Written here rather than taken from a library: the algorithm is the dozen lines of the
script, redis-cell is a server module that Debian's redis-server does not ship, and the
Python rate-limit libraries read the caller's clock or keep windows of counters.

When Redis does not answer, orders are let through (fail open): the limit is about fairness
between customers, not about safety, and CreateOrder's request_id claim needs the same Redis
right after, so it answers UNAVAILABLE then anyway; what failing open keeps is CreateOrder
working when only the limiter's call failed (a timeout, one sick shard of a cluster).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import redis

from meshkit.errors import ResourceExhausted, shown
from order_service.ports import RateLimit

_log = logging.getLogger(__name__)

#: GCRA: lets one order in if the customer is within its burst, and says when the next fits.
#: KEYS[1] the customer's key (its TAT, in µs of Redis's clock).
#: ARGV[1] the emission interval in µs (1 s / rate); ARGV[2] the tolerance in µs
#: (interval * (burst - 1): how far ahead of now the TAT may be and still let an order in).
#: Returns {1, 0} if the order is let in (the TAT moved on one interval, its key expiring
#: when it is reached), else {0, µs until an order would be let in} and nothing changes.
GCRA = """
local clock = redis.call('time')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('get', KEYS[1]) or now)
if tat < now then
    tat = now
end
local wait = tat - tonumber(ARGV[2]) - now
if wait > 0 then
    return {0, wait}
end
tat = tat + interval
redis.call('set', KEYS[1], string.format('%.0f', tat), 'px', math.ceil((tat - now) / 1000))
return {1, 0}
"""

DEFAULT_RATE_PER_S = 10.0
DEFAULT_BURST = 20
#: While Redis fails, one WARNING this often, counting the orders let through meanwhile.
OUTAGE_LOG_EVERY_S = 10.0


def rate_limit_key(customer_id: str) -> str:
    """The customer's key; the hash tag keeps every key of one customer in one cluster slot."""
    return f"order:ratelimit:{{{customer_id}}}"


class Outcome(StrEnum):
    """What the limiter did with one CreateOrder (the metric's ``outcome`` label)."""

    ALLOWED = "allowed"
    LIMITED = "limited"
    #: Redis did not answer, and the order was let through.
    REDIS_UNAVAILABLE = "redis_unavailable"


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimitOptions:
    """A steady rate of new orders per customer and the burst let in at once after a pause."""

    #: Orders per second per customer; 0 switches the limit off.
    per_s: float = DEFAULT_RATE_PER_S
    #: Orders a customer who has been idle may place at once.
    burst: int = DEFAULT_BURST

    def __post_init__(self) -> None:
        if not 0 <= self.per_s <= 1_000_000:
            raise ValueError(f"per_s must be in 0..1000000, got {self.per_s}")
        if self.burst < 1:
            raise ValueError(f"burst must be >= 1, got {self.burst}")

    @property
    def enabled(self) -> bool:
        return self.per_s > 0

    @property
    def interval_us(self) -> int:
        return max(1, round(1_000_000 / self.per_s))

    @property
    def tolerance_us(self) -> int:
        return self.interval_us * (self.burst - 1)

    def describe(self) -> str:
        return f"{self.per_s:g}/s per customer, bursts of {self.burst}"


class Unlimited:
    """The limit switched off: every order is let in, with no Redis call."""

    def admit(self, customer_id: str) -> None:
        return None


class CustomerRateLimit:
    """GCRA per customer in Redis; lets orders through while Redis does not answer."""

    def __init__(
        self,
        client: redis.Redis,
        options: RateLimitOptions,
        *,
        on_outcome: Callable[[Outcome], None] = lambda outcome: None,
        monotonic: Callable[[], float] = time.monotonic,
        outage_log_every_s: float = OUTAGE_LOG_EVERY_S,
    ) -> None:
        if not options.enabled:
            raise ValueError("a rate of 0 is no limit: use Unlimited")
        self._script = client.register_script(GCRA)
        self._args = (options.interval_us, options.tolerance_us)
        self._limit = options.describe()
        self._on_outcome = on_outcome
        self._outages = _OutageLog(monotonic, outage_log_every_s)

    def admit(self, customer_id: str) -> None:
        try:
            allowed, wait_us = self._script(keys=[rate_limit_key(customer_id)], args=self._args)
        except redis.RedisError as error:
            self._on_outcome(Outcome.REDIS_UNAVAILABLE)
            self._outages.failed(error)
            return
        if allowed:
            self._on_outcome(Outcome.ALLOWED)
            return
        self._on_outcome(Outcome.LIMITED)
        # Whole milliseconds, rounded up: a client that waits as told is let in.
        wait_ms = math.ceil(wait_us / 1000)
        raise ResourceExhausted(
            f"customer {shown(customer_id)} is over the order rate limit ({self._limit});"
            f" try again in {wait_ms} ms",
            retry_after_s=wait_ms / 1000,
        )


def rate_limit(
    client: redis.Redis,
    options: RateLimitOptions,
    *,
    on_outcome: Callable[[Outcome], None] = lambda outcome: None,
) -> RateLimit:
    """The limit ``options`` describe: :class:`Unlimited` when the rate is 0."""
    if not options.enabled:
        return Unlimited()
    return CustomerRateLimit(client, options, on_outcome=on_outcome)


class _OutageLog:
    """One WARNING per ``every_s`` while Redis fails: an outage must not write a line per order."""

    def __init__(self, monotonic: Callable[[], float], every_s: float) -> None:
        self._monotonic = monotonic
        self._every_s = every_s
        self._lock = threading.Lock()
        self._last_logged: float | None = None
        self._unlogged = 0

    def failed(self, error: redis.RedisError) -> None:
        now = self._monotonic()
        with self._lock:
            if self._last_logged is not None and now - self._last_logged < self._every_s:
                self._unlogged += 1
                return
            self._last_logged, unlogged, self._unlogged = now, self._unlogged, 0
        _log.warning(
            "rate limit not applied: redis unavailable (%s: %s); %d more orders let through"
            " unlimited since the last such line",
            type(error).__name__,
            error,
            unlogged,
        )
