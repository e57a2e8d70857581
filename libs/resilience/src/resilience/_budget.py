"""Retry budget per target with gRFC A6 `retryThrottling` semantics.

Tokens start at `max_tokens`. A failed attempt takes one token, a success gives `token_ratio`
back (never above the maximum). Retries are allowed only while tokens > max_tokens / 2; first
attempts always go. Tokens are kept in thousandths, as grpc-core does, so ratios never drift.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from ._errors import PolicyError

DEFAULT_MAX_TOKENS = 10.0
DEFAULT_TOKEN_RATIO = 0.1


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
