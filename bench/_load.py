"""A closed-loop load generator on grpc.aio: N calls in flight for a fixed duration."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc

#: Makes the i-th call of a worker; returns when the call has finished.
CallFactory = Callable[[int], Awaitable[object]]


@dataclass(slots=True)
class LoadResult:
    latencies_s: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    #: CPU seconds each measured process used, by name, when the caller measures them.
    cpu_s: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> int:
        return len(self.latencies_s)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def throughput(self) -> float:
        return self.ok / self.elapsed_s if self.elapsed_s else 0.0

    def percentile_ms(self, q: float) -> float:
        if not self.latencies_s:
            return math.nan
        ordered = sorted(self.latencies_s)
        index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
        return ordered[index] * 1000

    def merge(self, other: LoadResult) -> None:
        self.latencies_s.extend(other.latencies_s)
        for code, count in other.errors.items():
            self.errors[code] = self.errors.get(code, 0) + count
        self.elapsed_s += other.elapsed_s
        for name, used in other.cpu_s.items():
            self.cpu_s[name] = self.cpu_s.get(name, 0.0) + used


async def run_closed_loop(
    make_call: CallFactory, *, in_flight: int, duration_s: float
) -> LoadResult:
    """Keeps ``in_flight`` calls outstanding until ``duration_s`` has passed; bounded by time."""
    result = LoadResult()
    stop_at = time.perf_counter() + duration_s
    counter = 0

    async def worker() -> None:
        nonlocal counter
        while time.perf_counter() < stop_at:
            counter += 1
            started = time.perf_counter()
            try:
                await make_call(counter)
            except grpc.aio.AioRpcError as error:
                name = error.code().name
                result.errors[name] = result.errors.get(name, 0) + 1
                continue
            result.latencies_s.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    result.elapsed_s = time.perf_counter() - started
    return result
