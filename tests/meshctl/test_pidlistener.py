"""The listener speaks supervisord's event protocol and rewrites the record on every event."""

from __future__ import annotations

import io
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshctl.pidlistener import ProcSupervisor, run
from meshctl.pidrecord import SUPERVISORD, RecordedProcess, read_record


class FakeSupervisor:
    """supervisord as the listener sees it; ``running`` is what it has started."""

    def __init__(self, running: dict[str, int]) -> None:
        self.running = running
        self.answers = True

    def pid(self) -> int | None:
        return os.getpid() if self.answers else None

    def programs(self) -> dict[str, int]:
        return self.running


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
    supervisor.running["inventory"] = restarted.pid
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


def test_when_supervisord_is_gone_the_event_pid_is_recorded(
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


def test_supervisords_programs_are_its_children_that_carry_a_process_name() -> None:
    # This test process stands in for supervisord: what it spawns with the variable set are its
    # programs; a child without it is not, nor a program's own child, which inherits it.
    def spawn(argv: list[str], name: str | None) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if k != "SUPERVISOR_PROCESS_NAME"}
        if name is not None:
            env["SUPERVISOR_PROCESS_NAME"] = name
        return subprocess.Popen(argv, env=env, start_new_session=True)

    inventory = spawn(["sleep", "60"], "inventory")
    payment = spawn(["sh", "-c", "sleep 60 & wait"], "payment")
    unnamed = spawn(["sleep", "60"], None)
    try:
        supervisor = ProcSupervisor(os.getpid())

        assert supervisor.pid() == os.getpid()
        assert supervisor.programs() == {"inventory": inventory.pid, "payment": payment.pid}
    finally:
        for process in (inventory, payment, unnamed):
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_a_supervisord_that_is_gone_has_no_pid_and_no_programs() -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    supervisor = ProcSupervisor(gone.pid)

    assert supervisor.pid() is None
    assert supervisor.programs() == {}


def test_a_program_supervisord_runs_but_proc_cannot_name_is_recorded_from_its_event(
    tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    # redis-server rewrites its process title over the environment that names it.
    inventory, redis = sleepers
    path = tmp_path / "pids.json"
    supervisor = FakeSupervisor({"inventory": inventory.pid})
    stdin = io.StringIO(
        event(
            "PROCESS_STATE_RUNNING",
            f"processname:redis groupname:redis from_state:STARTING pid:{redis.pid}",
        )
    )

    run(path, supervisor, stdin, io.StringIO())

    assert names_and_pids(path) == {
        (SUPERVISORD, os.getpid()),
        ("inventory", inventory.pid),
        ("redis", redis.pid),
    }
