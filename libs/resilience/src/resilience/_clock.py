"""Injected time: the policies read `monotonic()` and wait with `sleep()`/`sleep_async()`."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    """Monotonic time in seconds plus the two ways to wait on it."""

    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...

    async def sleep_async(self, seconds: float) -> None: ...


class Rng(Protocol):
    """The part of `random.Random` the jitter needs: a float in [0, 1)."""

    def random(self) -> float: ...


class SystemClock:
    """The real clock: `time.monotonic`, `time.sleep`, `asyncio.sleep`."""

    __slots__ = ()

    monotonic = staticmethod(time.monotonic)
    sleep = staticmethod(time.sleep)

    async def sleep_async(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM_CLOCK = SystemClock()
