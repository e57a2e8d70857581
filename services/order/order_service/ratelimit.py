"""Per-customer rate limits on new orders: GCRA on Redis's clock, inside the script that
admits a new order (claims.ADMIT_AND_CLAIM).

GCRA (the generic cell rate algorithm, as redis-cell and Brandur Leach's "Rate limiting,
cells, and GCRA" use it) keeps one number per customer, the theoretical arrival time (TAT):
when the customer's orders so far would have been spread out at the steady rate. An order is
let in while the TAT is at most ``burst - 1`` intervals ahead of now, and pushes it on by one
interval; a refused order is told when the next one fits, and costs nothing. Unlike a fixed
window it never lets twice the rate through at a window's edge, and unlike a token bucket it
needs no refill.

The TAT is the customer's key's expiry: how far it is ahead of now is the key's ``PTTL``, and
pushing it on is a ``SET PX``. Redis counts expiries on its own clock, so order replicas with
skewed clocks share one schedule per customer without the script reading a clock (no
``TIME``), and a key expires exactly when its TAT is reached, when the customer is back at a
full burst: an idle customer costs no memory, and their next order is one ``SET NX PX``
that charges them at once (the usual case). Expiries count whole milliseconds, so the
schedule is kept to the millisecond (an interval under 1 ms, a rate above 1000/s, counts as
1 ms).

Written here rather than taken from a library: the algorithm is a dozen lines of the script,
redis-cell is a server module that Debian's redis-server does not ship, and the Python
rate-limit libraries read the caller's clock or keep windows of counters. It runs in the
request_id claim's script, not a script of its own, to save CreateOrder a round trip; a
request_id already claimed (a duplicate) is then neither charged nor refused.

When Redis does not answer, no new order can be claimed either, so CreateOrder answers
UNAVAILABLE: the limit is neither applied nor needed (counted as ``redis_unavailable``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import NoReturn

from meshkit.errors import ResourceExhausted, shown

DEFAULT_RATE_PER_S = 10.0
DEFAULT_BURST = 20


def rate_limit_key(customer_id: str) -> str:
    """The customer's key; the hash tag keeps every key of one customer in one cluster slot."""
    return f"order:ratelimit:{{{customer_id}}}"


class Outcome(StrEnum):
    """What the limiter did with one CreateOrder (the metric's ``outcome`` label)."""

    ALLOWED = "allowed"
    LIMITED = "limited"
    #: Redis did not answer the admission script: the order was refused UNAVAILABLE.
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


class CustomerRateLimit:
    """The limit as the admission script applies it: its arguments, and what its answers mean
    (reported to ``on_outcome``, a refusal raised as RESOURCE_EXHAUSTED with a retry delay)."""

    def __init__(
        self,
        options: RateLimitOptions,
        *,
        on_outcome: Callable[[Outcome], None] = lambda outcome: None,
    ) -> None:
        if not options.enabled:
            raise ValueError("a rate of 0 is no limit: pass no limit")
        #: The script's ARGV: the emission interval and the tolerance, in µs.
        self.script_args = (options.interval_us, options.tolerance_us)
        self._limit = options.describe()
        self._on_outcome = on_outcome

    def allowed(self) -> None:
        self._on_outcome(Outcome.ALLOWED)

    def unavailable(self) -> None:
        self._on_outcome(Outcome.REDIS_UNAVAILABLE)

    def refuse(self, customer_id: str, wait_us: int) -> NoReturn:
        """The script found the customer over the limit, ``wait_us`` before the next order fits."""
        self._on_outcome(Outcome.LIMITED)
        # Whole milliseconds, rounded up: a client that waits as told is let in.
        wait_ms = math.ceil(wait_us / 1000)
        raise ResourceExhausted(
            f"customer {shown(customer_id)} is over the order rate limit ({self._limit});"
            f" try again in {wait_ms} ms",
            retry_after_s=wait_ms / 1000,
        )


def rate_limit(
    options: RateLimitOptions, *, on_outcome: Callable[[Outcome], None] = lambda outcome: None
) -> CustomerRateLimit | None:
    """The limit ``options`` describe; None (no limit, no Redis key) when the rate is 0."""
    if not options.enabled:
        return None
    return CustomerRateLimit(options, on_outcome=on_outcome)
