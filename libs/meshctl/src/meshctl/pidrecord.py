"""What the stack started, by pid, so the launcher still finds it after supervisord died.

supervisord's children outlive it when it is killed (each leads its own process group), and
its pidfile and socket die with it. The record keeps each pid with the time it started
(field 22 of ``/proc/<pid>/stat``) and the boot it started in: a pid counts as the recorded
process only while both still match, so a recycled pid is never signalled. The supervisor
event listener in :mod:`meshctl.pidlistener` keeps the record current; this module reads,
writes and checks it, and stops what it names. Linux only (``/proc``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from resilience import Clock

RECORD_FILE = "pids.json"
SUPERVISORD = "supervisord"
#: How long a process gets after SIGTERM before SIGKILL (supervisord's stopwaitsecs).
DEFAULT_STOP_TIMEOUT_S = 10.0
#: After SIGKILL only the kernel is left to act; this is how long we wait for it.
KILL_WAIT_S = 2.0
_POLL_S = 0.05
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def start_time(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot; None when it is gone or a zombie."""
    if pid <= 0:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The fields after the ")" closing the command name (which may hold spaces and ")")
    # start at field 3, the state: field 22 is the 20th of them.
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else int(fields[19])


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (exited, not yet reaped) counts as gone."""
    return start_time(pid) is not None


def cmdline(pid: int) -> list[str]:
    """The argv of ``pid``; empty when it is gone (or a kernel thread)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return raw.decode(errors="replace").split("\0")[:-1]


def boot_id() -> str:
    """This boot's id: start times count from boot, so they only compare within one."""
    return _BOOT_ID.read_text().strip()


@dataclass(frozen=True, slots=True)
class RecordedProcess:
    """One process the stack started: its program name, pid and start time."""

    name: str
    pid: int
    start_time: int

    @classmethod
    def of(cls, name: str, pid: int) -> RecordedProcess | None:
        """``pid`` as it is now; None when it no longer runs."""
        started = start_time(pid)
        return None if started is None else cls(name, pid, started)

    def is_alive(self) -> bool:
        """True while this very process runs (not merely some process with its pid)."""
        return start_time(self.pid) == self.start_time


@dataclass(frozen=True, slots=True)
class PidRecord:
    """Every process recorded in one boot, supervisord included."""

    boot_id: str
    processes: tuple[RecordedProcess, ...] = ()

    def alive(self) -> list[RecordedProcess]:
        """The recorded processes that still run; none when the machine has rebooted since."""
        if self.boot_id != boot_id():
            return []
        return [process for process in self.processes if process.is_alive()]

    def find(self, name: str, pid: int) -> RecordedProcess | None:
        """The entry for ``pid`` under ``name``, if this boot recorded one (alive or not)."""
        if self.boot_id != boot_id():
            return None
        return next((p for p in self.processes if p.name == name and p.pid == pid), None)

    def merged(self, current: Iterable[RecordedProcess]) -> PidRecord:
        """``current`` first, then every older entry that still runs, so a process is only
        forgotten once it is gone."""
        fresh = list(dict.fromkeys(current))
        pids = {process.pid for process in fresh}
        kept = [p for p in self.alive() if p.pid not in pids]
        return PidRecord(boot_id(), (*fresh, *kept))


def read_record(path: Path) -> PidRecord:
    """The record at ``path``; an empty one when there is none (or it cannot be read)."""
    try:
        data: Any = json.loads(path.read_text())
        return PidRecord(
            str(data["boot_id"]),
            tuple(
                RecordedProcess(str(p["name"]), int(p["pid"]), int(p["start_time"]))
                for p in data["processes"]
            ),
        )
    except FileNotFoundError:
        return PidRecord("")
    except (OSError, ValueError, KeyError, TypeError):
        # Writes are atomic, so this is someone else's file: trust none of it.
        return PidRecord("")


def write_record(path: Path, record: PidRecord) -> None:
    """Replaces the record atomically: a reader sees the old one or the new one, never half."""
    data = {
        "boot_id": record.boot_id,
        "processes": [
            {"name": p.name, "pid": p.pid, "start_time": p.start_time} for p in record.processes
        ],
    }
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=1)
            handle.write("\n")
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def stop_processes(
    processes: Sequence[RecordedProcess],
    *,
    clock: Clock,
    timeout_s: float = DEFAULT_STOP_TIMEOUT_S,
) -> list[RecordedProcess]:
    """Stops each process in turn, the next once the previous is gone: SIGTERM (to its whole
    group when it leads one, as supervisord's stopasgroup does), SIGKILL after ``timeout_s``.
    A pid that is no longer the recorded process is left alone. Returns what still runs."""
    left = []
    for process in processes:
        if not _signal(process, signal.SIGTERM) or _wait_gone(process, timeout_s, clock):
            continue
        if _signal(process, signal.SIGKILL) and not _wait_gone(process, KILL_WAIT_S, clock):
            left.append(process)
    return left


def _signal(process: RecordedProcess, signum: int) -> bool:
    """Signals ``process`` if it is still the one recorded; False when it is gone."""
    if not process.is_alive():
        return False
    try:
        if os.getpgid(process.pid) == process.pid:
            # While the leader runs its pid, and so the group id, cannot be reused.
            os.killpg(process.pid, signum)
        else:
            os.kill(process.pid, signum)
    except ProcessLookupError:
        return False
    return True


def _wait_gone(process: RecordedProcess, timeout_s: float, clock: Clock) -> bool:
    deadline = clock.monotonic() + timeout_s
    while process.is_alive():
        if clock.monotonic() >= deadline:
            return False
        clock.sleep(_POLL_S)
    return True
