"""The Charge faults in force: the start-up settings (PAYMENT_FAULT_RATE, PAYMENT_FAULT_CODE,
PAYMENT_LATENCY_MS) until ``make fault AT=server`` writes this deployment's fault file, then
the file's, until it is removed (meshkit.faults says how often the file is looked at)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple

import grpc

from meshkit.faults import Fault, FaultFile

from .domain import FaultPolicy


class ChargeFaults(NamedTuple):
    policy: FaultPolicy
    code: grpc.StatusCode
    #: What the injected failure's message names as its cause.
    source: str


class LiveFaults:
    def __init__(
        self,
        initial: ChargeFaults,
        file: FaultFile,
        *,
        random: Callable[[], float],
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._initial = initial
        self._file = file
        self._random = random
        self._sleep = sleep
        self._fault: Fault | None = None
        self._current = initial

    def current(self) -> ChargeFaults:
        fault = self._file.current()
        if fault != self._fault:
            self._fault = fault
            self._current = self._initial if fault is None else self._from(fault)
        return self._current

    def _from(self, fault: Fault) -> ChargeFaults:
        policy = FaultPolicy(
            rate=fault.abort_percent / 100,
            latency_s=fault.delay_ms / 1000,
            latency_rate=fault.delay_percent / 100,
            random=self._random,
            sleep=self._sleep,
        )
        source = f"{self._file.path.name}: abort_percent={fault.abort_percent}"
        return ChargeFaults(policy, fault.code, source)
