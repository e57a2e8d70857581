"""The listener speaks supervisord's event protocol and rewrites the record on every event."""

from __future__ import annotations

import io
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshctl.pidlistener import run
from meshctl.pidrecord import SUPERVISORD, RecordedProcess, read_record


class FakeSupervisor:
    """supervisord's RPC as the listener sees it; ``programs`` is what it has started."""

    def __init__(self, programs: dict[str, int]) -> None:
        self.programs = programs
        self.answers = True

    def getPID(self) -> int:
        return os.getpid()

    def getAllProcessInfo(self) -> list[dict[str, Any]]:
        if not self.answers:
            raise ConnectionRefusedError("supervisord is gone")
        return [{"name": name, "pid": pid} for name, pid in self.programs.items()]


def event(name: str, payload: str) -> str:
    """One event as supervisord writes it: a header line, then ``len`` bytes of payload."""
    header = "ver:3.0 server:supervisor serial:1 pool:pidrecord poolserial:1"
    return f"{header} eventname:{name} len:{len(payload)}\n{payload}"


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    processes = [subprocess.Popen(["sleep", "60"]) for _ in range(2)]
    yield processes
    for process in processes:
        process.kill()
        process.wait()


def names_and_pids(path: Path) -> set[tuple[str, int]]:
    return {(p.name, p.pid) for p in read_record(path).processes}


def test_each_event_is_acknowledged_and_the_restarted_pid_recorded(
    tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    first, restarted = sleepers
    path = tmp_path / "pids.json"
    supervisor = FakeSupervisor({"inventory": first.pid})
    # supervisord restarts inventory: the old process is gone when the new one starts.
    first.kill()
    first.wait()
    supervisor.programs["inventory"] = restarted.pid
    stdin = io.StringIO(
        event(
            "PROCESS_STATE_RUNNING",
            f"processname:inventory groupname:inventory from_state:STARTING pid:{restarted.pid}",
        )
    )
    stdout = io.StringIO()

    run(path, supervisor, stdin, stdout)

    assert stdout.getvalue() == "READY\nRESULT 2\nOKREADY\n"
    assert names_and_pids(path) == {(SUPERVISORD, os.getpid()), ("inventory", restarted.pid)}


def test_when_supervisord_does_not_answer_the_event_pid_is_recorded(
    tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    catalog, order = sleepers
    path = tmp_path / "pids.json"
    supervisor = FakeSupervisor({"catalog": catalog.pid})
    stdin = io.StringIO(
        event(
            "PROCESS_STATE_RUNNING",
            f"processname:order groupname:order from_state:STARTING pid:{order.pid}",
        )
    )
    run(path, supervisor, io.StringIO(), io.StringIO())  # starts, records, sees EOF
    supervisor.answers = False

    run(path, supervisor, stdin, io.StringIO())

    # What it knew is kept while it runs; what the event names is added.
    assert names_and_pids(path) == {
        (SUPERVISORD, os.getpid()),
        ("catalog", catalog.pid),
        ("order", order.pid),
    }


def test_an_event_without_a_pid_changes_nothing(
    tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    path = tmp_path / "pids.json"
    supervisor = FakeSupervisor({"catalog": sleepers[0].pid})
    run(path, supervisor, io.StringIO(), io.StringIO())
    before = path.stat().st_mtime_ns
    supervisor.answers = False
    stdin = io.StringIO(event("PROCESS_STATE_STARTING", "processname:x groupname:x tries:0"))

    run(path, supervisor, stdin, io.StringIO())

    assert path.stat().st_mtime_ns == before
    entry = RecordedProcess.of("catalog", sleepers[0].pid)
    assert entry in read_record(path).processes
