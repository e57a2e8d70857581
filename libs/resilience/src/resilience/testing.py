"""Test helpers: a fake clock that never sleeps and a scripted RNG."""

from __future__ import annotations

from collections.abc import Iterable


class FakeClock:
    """`monotonic()` only moves when told to or when someone "sleeps"; sleeps are recorded."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    async def sleep_async(self, seconds: float) -> None:
        self.sleep(seconds)


class ScriptedRng:
    """Returns the given values in turn (cycling); `ScriptedRng([1.0 - 1e-9])` is "always max"."""

    def __init__(self, values: Iterable[float]) -> None:
        self._values = list(values) or [0.5]
        self._i = 0

    def random(self) -> float:
        value = self._values[self._i % len(self._values)]
        self._i += 1
        return value
