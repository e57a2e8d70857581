"""Retry budgets per target: what share of its calls a target's retries may add.

Two models, one per target, shared by all its methods:

* `RetryBudget`, gRFC A6 `retryThrottling`. Tokens start at `max_tokens`. A failed attempt takes
  one token, a success gives `token_ratio` back (never above the maximum). Retries are allowed
  only while tokens > max_tokens / 2; first attempts always go. Tokens are kept in thousandths,
  as grpc-core does, so ratios never drift. It stops all retries once more than
  ratio / (1 + ratio) of attempts fail (~9% with A6's example 0.1): it cannot tell a transient
  10% from a sick backend.
* `RatioRetryBudget`, the Finagle / Envoy model (`retryBudget`). Retries may add up to
  `budget_percent` of the calls of the last `window`, plus a floor of `min_retries_per_second`
  so a quiet client still retries. A transient 10% is retried away (its retries are ~11% of the
  calls), while a sick backend gets at most 1 + percent times its calls, whatever fails.

A `Budget` is what the call loop sees: `on_request` when a call's first attempt goes (`None` when
the budget does not count calls), `on_success`/`on_failure` per attempt, `try_retry` before a
retry, which a ratio budget also withdraws from.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ._errors import PolicyError

DEFAULT_MAX_TOKENS = 10.0
DEFAULT_TOKEN_RATIO = 0.1
DEFAULT_BUDGET_PERCENT = 20.0
#: Finagle's default is 10/s; a client of this size makes tens of calls per second, where 10/s
#: would dwarf the percentage. 3/s still lets a lone caller retry a transient failure.
DEFAULT_MIN_RETRIES_PER_SECOND = 3.0
DEFAULT_BUDGET_WINDOW = 10.0
_WINDOW_BUCKETS = 10


class Budget(Protocol):
    """A target's retry budget as the call loop uses it (see the module docstring)."""

    #: True while `on_success` has nothing to do: the loop then skips the call.
    full: bool

    @property
    def on_request(self) -> Callable[[float], None] | None: ...

    @property
    def tokens(self) -> float:
        """What is left: A6 tokens, or retries a ratio budget would still allow."""
        ...

    def on_success(self) -> None: ...

    def on_failure(self) -> None: ...

    def try_retry(self, now: float) -> bool:
        """True when a retry may go now; the retry is then counted against the budget."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ThrottleOptions:
    """`retryThrottling` from the gRPC service config."""

    max_tokens: float = DEFAULT_MAX_TOKENS
    token_ratio: float = DEFAULT_TOKEN_RATIO

    def __post_init__(self) -> None:
        if not 0 < self.max_tokens <= 1000:
            raise PolicyError("maxTokens", "in (0, 1000]", self.max_tokens)
        if not 0 < self.token_ratio <= 1:
            raise PolicyError("tokenRatio", "in (0, 1]", self.token_ratio)


class RetryBudget:
    """The token bucket; all methods are O(1) and hold the lock only for arithmetic."""

    __slots__ = ("_full", "_lock", "_milli", "_ratio", "_threshold", "full")

    def __init__(self, options: ThrottleOptions) -> None:
        self._full = round(options.max_tokens * 1000)
        self._ratio = round(options.token_ratio * 1000)
        self._threshold = self._full // 2
        self._milli = self._full
        self._lock = threading.Lock()
        # Read without the lock by callers: a success leaves a full bucket as it is, so the
        # happy path may skip `on_success()` altogether.
        self.full = True

    @property
    def tokens(self) -> float:
        return self._milli / 1000

    def on_success(self) -> None:
        if self.full:
            return
        with self._lock:
            self._milli = min(self._full, self._milli + self._ratio)
            self.full = self._milli >= self._full

    def on_failure(self) -> None:
        with self._lock:
            self._milli = max(0, self._milli - 1000)
            self.full = False

    def allows_retry(self) -> bool:
        return self._milli > self._threshold

    def try_retry(self, now: float) -> bool:
        # The failure that asks for the retry has taken its token already.
        return self._milli > self._threshold

    @property
    def on_request(self) -> None:
        """A6 counts attempts' outcomes, not calls."""
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class RatioBudgetOptions:
    """`retryBudget`: retries <= `budget_percent` of the calls of the last `window` seconds,
    plus `min_retries_per_second` (Finagle's `RetryBudget`, Envoy's `retry_budget`)."""

    budget_percent: float = DEFAULT_BUDGET_PERCENT
    min_retries_per_second: float = DEFAULT_MIN_RETRIES_PER_SECOND
    window: float = DEFAULT_BUDGET_WINDOW

    def __post_init__(self) -> None:
        if not 0 <= self.budget_percent <= 100:
            raise PolicyError("budgetPercent", "in [0, 100]", self.budget_percent)
        if not 0 <= self.min_retries_per_second <= 10_000:
            raise PolicyError("minRetriesPerSecond", "in [0, 10000]", self.min_retries_per_second)
        if not 1 <= self.window <= 3600:
            raise PolicyError("window", "in [1, 3600] seconds", self.window)


class RatioRetryBudget:
    """Calls and retries counted in a sliding window of `_WINDOW_BUCKETS` buckets.

    A retry may go while the window's retries, itself included, stay within percent x its
    calls plus the floor (min_retries_per_second x window); the check and the count are one step
    under the lock, so racing callers cannot overdraw it. Expired buckets are dropped as time
    moves (O(1) a call).
    """

    __slots__ = (
        "_bucket",
        "_calls",
        "_calls_total",
        "_lock",
        "_per_width",
        "_ratio",
        "_reserve",
        "_retries",
        "_retries_total",
    )

    #: Successes cost nothing here: the loop never calls `on_success`.
    full = True

    def __init__(self, options: RatioBudgetOptions, now: float) -> None:
        self._per_width = _WINDOW_BUCKETS / options.window  # buckets per second
        self._ratio = options.budget_percent / 100
        self._reserve = options.min_retries_per_second * options.window
        self._calls = [0] * _WINDOW_BUCKETS
        self._retries = [0] * _WINDOW_BUCKETS
        self._calls_total = 0
        self._retries_total = 0
        self._bucket = int(now * self._per_width)  # the newest bucket's number since time 0
        self._lock = threading.Lock()

    @property
    def on_request(self) -> Callable[[float], None]:
        return self._count_call

    @property
    def tokens(self) -> float:
        return self._calls_total * self._ratio + self._reserve - self._retries_total

    def on_success(self) -> None:
        pass

    def on_failure(self) -> None:
        pass

    def try_retry(self, now: float) -> bool:
        bucket = int(now * self._per_width)
        with self._lock:
            if bucket > self._bucket:
                self._advance(bucket)
            if self._retries_total + 1 > self._calls_total * self._ratio + self._reserve:
                return False
            self._retries[bucket % _WINDOW_BUCKETS] += 1
            self._retries_total += 1
            return True

    def _count_call(self, now: float) -> None:
        # On every call's path: the bucket is worked out before the lock is taken.
        bucket = int(now * self._per_width)
        with self._lock:
            if bucket > self._bucket:
                self._advance(bucket)
            self._calls[bucket % _WINDOW_BUCKETS] += 1
            self._calls_total += 1

    def _advance(self, bucket: int) -> None:
        """Makes `bucket` the newest, dropping the buckets that have left the window."""
        for expired in range(self._bucket + 1, min(bucket, self._bucket + _WINDOW_BUCKETS) + 1):
            index = expired % _WINDOW_BUCKETS
            self._calls_total -= self._calls[index]
            self._retries_total -= self._retries[index]
            self._calls[index] = self._retries[index] = 0
        self._bucket = bucket
