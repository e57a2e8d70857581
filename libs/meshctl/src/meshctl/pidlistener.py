"""Keeps the stack's pid record current: ``python -m meshctl.pidlistener <record path>``.

supervisord runs it as an event listener subscribed to PROCESS_STATE (see
:func:`meshctl.render.supervisord_conf`). On every state change it rewrites the record
(:mod:`meshctl.pidrecord`) from what it reads in ``/proc``: supervisord is its parent, and
supervisord's programs are the parent's children that carry ``SUPERVISOR_PROCESS_NAME`` in
their environment (supervisord sets it for every program it spawns). So a program that
supervisord restarts is recorded under its new pid, and so is one still STARTING, whose event
carries no pid, in case supervisord dies before it runs. The process an event names (with its
pid) is recorded too, which covers a program whose process title has overwritten that
environment (redis-server) and the time after supervisord is gone; when stdin ends, so does the
listener.

Reading ``/proc`` instead of asking supervisord over XML-RPC keeps this process small: it runs
for the stack's whole life, and ``supervisor.childutils`` with ``xmlrpc.client`` cost 13 MiB
of RSS more than the 14 MiB it needs now. The event protocol itself (a header line, a payload,
``READY`` / ``RESULT 2\\nOK`` on stdout) is written out here for the same reason.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol, TextIO

from meshctl.pidrecord import SUPERVISORD, PidRecord, RecordedProcess, read_record, write_record

PROCESS_NAME_VAR = b"SUPERVISOR_PROCESS_NAME="
_PROC = Path("/proc")


class Supervisor(Protocol):
    """supervisord as the listener sees it."""

    def pid(self) -> int | None:
        """supervisord's pid; None once it is gone."""
        ...

    def programs(self) -> Mapping[str, int]:
        """The pid of every program supervisord has running or starting, by name."""
        ...


class ProcSupervisor:
    """The supervisord running as ``pid``, read from ``/proc``."""

    def __init__(self, pid: int) -> None:
        # Pid and start time, so a recycled pid is never taken for supervisord.
        self._process = RecordedProcess.of(SUPERVISORD, pid)

    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None and process.is_alive() else None

    def programs(self) -> dict[str, int]:
        supervisord = self.pid()
        found: dict[str, int] = {}
        for entry in _PROC.iterdir() if supervisord is not None else ():
            if entry.name.isdigit() and _parent_pid(entry) == supervisord:
                name = _process_name(entry)
                if name is not None:
                    found[name] = int(entry.name)
        return found


def _parent_pid(proc_dir: Path) -> int | None:
    try:
        stat = (proc_dir / "stat").read_text()
    except OSError:
        return None
    # Fields after the ")" that closes the command name: state, then the parent's pid.
    return int(stat.rsplit(")", 1)[1].split()[1])


def _process_name(proc_dir: Path) -> str | None:
    """supervisord's name for the program; None before it has exec'd (the environment is still
    supervisord's own) or once it is gone."""
    try:
        environ = (proc_dir / "environ").read_bytes()
    except OSError:
        return None
    for variable in environ.split(b"\0"):
        if variable.startswith(PROCESS_NAME_VAR):
            return variable[len(PROCESS_NAME_VAR) :].decode()
    return None


def snapshot(supervisor: Supervisor) -> list[RecordedProcess] | None:
    """supervisord and every program it has a pid for, as they are now; None once it is gone."""
    supervisord = supervisor.pid()
    if supervisord is None:
        return None
    pids = [(SUPERVISORD, supervisord), *supervisor.programs().items()]
    return [p for name, pid in pids if (p := RecordedProcess.of(name, pid)) is not None]


def headers(line: str) -> dict[str, str]:
    """``key:value key:value`` as supervisord writes event headers and payload headers."""
    return dict(token.split(":", 1) for token in line.split())


def from_event(event_headers: Mapping[str, str], payload: str) -> list[RecordedProcess]:
    """The process an event names, when it carries a pid (RUNNING, STOPPING, EXITED, ...)."""
    if not event_headers.get("eventname", "").startswith("PROCESS_STATE"):
        return []
    fields = headers(payload.split("\n", 1)[0])
    process = RecordedProcess.of(fields.get("processname", ""), int(fields.get("pid", "0")))
    return [] if process is None else [process]


def run(path: Path, supervisor: Supervisor, stdin: TextIO, stdout: TextIO) -> None:
    """Serves supervisord's listener protocol until stdin ends, updating the record at
    ``path`` on every event."""
    record = _update(path, read_record(path), supervisor, [])
    while True:
        stdout.write("READY\n")
        stdout.flush()
        line = stdin.readline()
        if not line:
            return
        event_headers = headers(line)
        payload = stdin.read(int(event_headers["len"]))
        record = _update(path, record, supervisor, from_event(event_headers, payload))
        stdout.write("RESULT 2\nOK")
        stdout.flush()


def _update(
    path: Path, record: PidRecord, supervisor: Supervisor, named: list[RecordedProcess]
) -> PidRecord:
    # The event's own process too: a program that rewrites its process title (redis-server
    # does) overwrites the environment that names it, so /proc alone would miss it.
    updated = record.merged([*(snapshot(supervisor) or ()), *named])
    if updated != record:
        write_record(path, updated)
    return updated


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m meshctl.pidlistener <record path>", file=sys.stderr)
        return 2
    # supervisord starts its event listeners itself: the parent is the supervisord to read.
    run(Path(argv[0]), ProcSupervisor(os.getppid()), sys.stdin, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
