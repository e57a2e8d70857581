"""Wait strategies: small callables `(retry_number, rng) -> seconds`, combined with `+`.

`retry_number` counts retries from 1 (the delay before the second attempt).
"""

from __future__ import annotations

from dataclasses import dataclass

from ._clock import Rng
from ._errors import PolicyError


class Wait:
    """Base class: how long to wait before retry number `n` (1-based)."""

    __slots__ = ()

    def __call__(self, n: int, rng: Rng) -> float:
        raise NotImplementedError

    def __add__(self, other: Wait) -> Wait:
        return WaitSum(first=self, second=other)


@dataclass(frozen=True, slots=True, kw_only=True)
class WaitSum(Wait):
    """The sum of two waits, e.g. a fixed floor plus jitter."""

    first: Wait
    second: Wait

    def __call__(self, n: int, rng: Rng) -> float:
        return self.first(n, rng) + self.second(n, rng)


@dataclass(frozen=True, slots=True, kw_only=True)
class WaitFixed(Wait):
    """Always the same delay."""

    seconds: float

    def __post_init__(self) -> None:
        if not 0 <= self.seconds <= 3600:
            raise PolicyError("seconds", "in [0, 3600]", self.seconds)

    def __call__(self, n: int, rng: Rng) -> float:
        return self.seconds


@dataclass(frozen=True, slots=True, kw_only=True)
class WaitFullJitter(Wait):
    """gRFC A6 backoff: uniform in [0, min(initial * multiplier**(n-1), maximum)]."""

    initial: float
    maximum: float
    multiplier: float

    def __post_init__(self) -> None:
        if not 0 < self.initial <= 3600:
            raise PolicyError("initialBackoff", "in (0, 3600] seconds", self.initial)
        if not self.initial <= self.maximum <= 3600:
            raise PolicyError(
                "maxBackoff", f"in [initialBackoff={self.initial}, 3600] s", self.maximum
            )
        if not 1 <= self.multiplier <= 10:
            raise PolicyError("backoffMultiplier", "in [1, 10]", self.multiplier)

    def cap(self, n: int) -> float:
        """The upper bound of the delay before retry `n`."""
        try:
            return min(self.initial * self.multiplier ** (n - 1), self.maximum)
        except OverflowError:  # a huge retry number: the exponential is past any maximum
            return self.maximum

    def __call__(self, n: int, rng: Rng) -> float:
        return rng.random() * self.cap(n)
