"""Faults a server injects into its own calls, switched live: one small JSON file per deployment
(``$MESH_FAULTS_DIR/<program>.json``) that ``make fault AT=server`` writes and the server
re-reads.

Why a file, looked at by mtime: a call pays no I/O, only a clock read, and at most one call
every :data:`CHECK_INTERVAL_S` stats the file (and reads it when it changed); there is no
thread to start and stop with the server, no Redis the service may not otherwise need, and a
fault outlives a restart of the deployment it slows, as Envoy's runtime does. Envoy's fault
filter (meshctl.faults) covers faults in front of a server; these are the ones that must
happen inside it, such as slowness that holds its threads.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from meshkit import settings

CHECK_INTERVAL_S = 0.5
MAX_DELAY_MS = 60_000
DEFAULT_CODE = grpc.StatusCode.UNAVAILABLE
#: Every status a fault may answer with: all but OK (a "fault" that succeeds is none).
CODES = tuple(code.name for code in grpc.StatusCode if code is not grpc.StatusCode.OK)

FAULTS_DIR = settings.path(
    "MESH_FAULTS_DIR",
    "var/run/faults",
    doc="where a server reads the faults `make fault AT=server` sets for it (re-read live)",
)

_log = logging.getLogger(__name__)


class FaultError(ValueError):
    """A fault value out of range, or a fault file that is not one; the message names the field."""


def parse_code(name: str) -> grpc.StatusCode:
    """A gRPC status name (``UNAVAILABLE``, case-insensitive), any but OK."""
    code = grpc.StatusCode.__members__.get(name.strip().upper())
    if code is None or code is grpc.StatusCode.OK:
        raise FaultError(f"code {name!r}: must be one of {', '.join(CODES)}")
    return code


@dataclass(frozen=True, slots=True, kw_only=True)
class Fault:
    """Abort ``abort_percent`` of the calls with ``code``; delay ``delay_percent`` of them by
    ``delay_ms`` (a delayed call may then be aborted too, as Envoy's fault filter does)."""

    abort_percent: int = 0
    code: grpc.StatusCode = DEFAULT_CODE
    delay_ms: int = 0
    delay_percent: int = 0

    def __post_init__(self) -> None:
        for name in ("abort_percent", "delay_percent"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
                raise FaultError(f"{name}={value!r}: must be an integer percent in 0..100")
        delay = self.delay_ms
        if isinstance(delay, bool) or not isinstance(delay, int) or not 0 <= delay <= MAX_DELAY_MS:
            raise FaultError(f"delay_ms={delay!r}: must be an integer in 0..{MAX_DELAY_MS}")
        if self.code is grpc.StatusCode.OK or not isinstance(self.code, grpc.StatusCode):
            raise FaultError(f"code={self.code!r}: must be one of {', '.join(CODES)}")

    @property
    def aborts(self) -> bool:
        return self.abort_percent > 0

    @property
    def delays(self) -> bool:
        return self.delay_ms > 0 and self.delay_percent > 0

    @property
    def active(self) -> bool:
        return self.aborts or self.delays

    def describe(self) -> str:
        """``abort 20% UNAVAILABLE, delay 800 ms on 50%``, or ``none``."""
        parts = []
        if self.aborts:
            parts.append(f"abort {self.abort_percent}% {self.code.name}")
        if self.delays:
            parts.append(f"delay {self.delay_ms} ms on {self.delay_percent}%")
        return ", ".join(parts) or "none"

    def to_json(self) -> str:
        return json.dumps(
            {
                "abort_percent": self.abort_percent,
                "code": self.code.name,
                "delay_ms": self.delay_ms,
                "delay_percent": self.delay_percent,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Fault:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as error:
            raise FaultError(f"not JSON: {error}") from None
        if not isinstance(raw, dict):
            raise FaultError("not a JSON object")
        unknown = set(raw) - {"abort_percent", "code", "delay_ms", "delay_percent"}
        if unknown:
            raise FaultError(f"unknown fields: {', '.join(sorted(unknown))}")
        code = raw.get("code", DEFAULT_CODE.name)
        if not isinstance(code, str):
            raise FaultError(f"code={code!r}: must be one of {', '.join(CODES)}")
        return cls(
            abort_percent=raw.get("abort_percent", 0),
            code=parse_code(code),
            delay_ms=raw.get("delay_ms", 0),
            delay_percent=raw.get("delay_percent", 0),
        )


def fault_path(directory: Path, program: str) -> Path:
    """Where ``program`` (its supervisord name, e.g. ``payment_v2``) reads its faults."""
    return directory / f"{program}.json"


def write_fault(path: Path, fault: Fault) -> None:
    """Replaces the file whole (rename), so a server never reads half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(fault.to_json() + "\n")
    partial.replace(path)


def read_fault(path: Path) -> Fault | None:
    """The fault in ``path``; None when there is no file."""
    try:
        return Fault.from_json(path.read_text())
    except FileNotFoundError:
        return None


class FaultFile:
    """The fault in one file, as a server's calls see it: looked at no more than once every
    ``interval_s`` (by the first call after that), read again only when the file changed.
    None while there is no file: the server keeps its start-up settings then. A file that does
    not parse is logged once and leaves the fault as it was."""

    def __init__(
        self,
        path: Path,
        *,
        interval_s: float = CHECK_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self._interval_s = interval_s
        self._clock = clock
        self._next_check = float("-inf")
        self._seen: tuple[int, int, int] | None = None
        self._fault: Fault | None = None

    def current(self) -> Fault | None:
        # Calls racing past the check both stat and maybe parse: harmless, and cheaper than a
        # lock every call would take.
        now = self._clock()
        if now < self._next_check:
            return self._fault
        self._next_check = now + self._interval_s
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._seen = self._fault = None
            return None
        # A rename gives a new inode even within one mtime tick.
        seen = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if seen != self._seen:
            self._seen = seen
            try:
                fault = read_fault(self.path)
            except (FaultError, OSError) as error:
                _log.warning("%s: not a fault file, faults left as they were: %s", self.path, error)
            else:
                if fault != self._fault:
                    _log.info(
                        "%s: faults now %s",
                        self.path,
                        "none" if fault is None else fault.describe(),
                    )
                self._fault = fault
        return self._fault
