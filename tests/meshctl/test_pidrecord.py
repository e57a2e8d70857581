"""A recorded pid counts as ours only while its start time matches; stopping goes by group."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshctl.pidrecord import (
    PidRecord,
    RecordedProcess,
    boot_id,
    read_record,
    start_time,
    stop_processes,
    write_record,
)
from meshkit.testing import wait_until
from resilience import SYSTEM_CLOCK
from resilience.testing import FakeClock

IGNORES_TERM = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ready', flush=True); time.sleep(60)"
)


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A process leading its own group, as supervisord's children do."""
    process = subprocess.Popen(["sleep", "60"], start_new_session=True)
    yield process
    process.kill()
    process.wait()


def recorded(process: subprocess.Popen[bytes], name: str = "sleeper") -> RecordedProcess:
    entry = RecordedProcess.of(name, process.pid)
    assert entry is not None
    return entry


def recycled(entry: RecordedProcess) -> RecordedProcess:
    """The same pid, started at another time: what the record of a recycled pid looks like."""
    return dataclasses.replace(entry, start_time=entry.start_time - 1)


def test_a_running_process_is_recorded_with_its_start_time(
    sleeper: subprocess.Popen[bytes],
) -> None:
    entry = recorded(sleeper)
    assert entry.start_time == start_time(sleeper.pid)
    assert entry.is_alive()


def test_an_exited_process_is_neither_recordable_nor_alive(
    sleeper: subprocess.Popen[bytes],
) -> None:
    entry = recorded(sleeper)
    sleeper.kill()
    sleeper.wait()
    assert RecordedProcess.of("sleeper", sleeper.pid) is None
    assert not entry.is_alive()


def test_a_zombie_counts_as_gone(sleeper: subprocess.Popen[bytes]) -> None:
    entry = recorded(sleeper)
    sleeper.kill()
    # Not reaped yet: the pid still exists, but the process has ended.
    wait_until(lambda: start_time(sleeper.pid) is None, timeout_s=5, what="sleep to die")
    assert not entry.is_alive()


def test_a_recorded_pid_whose_start_time_no_longer_matches_is_not_signalled(
    sleeper: subprocess.Popen[bytes],
) -> None:
    clock = FakeClock()

    assert stop_processes([recycled(recorded(sleeper))], clock=clock) == []

    assert sleeper.poll() is None
    assert clock.sleeps == []


def test_stopping_terminates_the_whole_group_of_a_leader(tmp_path: Path) -> None:
    child_pid_file = tmp_path / "child.pid"
    leader = subprocess.Popen(
        ["sh", "-c", f"sleep 60 & echo $! > {child_pid_file}; wait"], start_new_session=True
    )
    try:
        wait_until(
            lambda: child_pid_file.is_file() and child_pid_file.read_text().strip(),
            timeout_s=5,
            what="the child's pid",
        )
        child = RecordedProcess.of("child", int(child_pid_file.read_text()))
        assert child is not None

        assert stop_processes([recorded(leader, "leader")], clock=SYSTEM_CLOCK) == []

        assert leader.wait(timeout=5) == -15
        wait_until(lambda: not child.is_alive(), timeout_s=5, what="the group's other member")
    finally:
        leader.kill()
        leader.wait()


def test_what_ignores_sigterm_gets_sigkill_after_the_timeout() -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", IGNORES_TERM], stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == b"ready\n"

        assert stop_processes([recorded(process)], clock=SYSTEM_CLOCK, timeout_s=0.2) == []

        assert process.wait(timeout=5) == -9
    finally:
        process.kill()
        process.wait()


def test_the_record_round_trips_and_is_replaced_whole(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    path = tmp_path / "pids.json"
    record = PidRecord(boot_id(), (recorded(sleeper), recycled(recorded(sleeper, "gone"))))

    write_record(path, record)

    assert read_record(path) == record
    assert [p.name for p in tmp_path.iterdir()] == ["pids.json"]  # no temp file left
    assert read_record(path).alive() == [recorded(sleeper)]


@pytest.mark.parametrize("text", ["", "{", '{"boot_id": 1}', "[]", '{"processes": "x"}'])
def test_an_unreadable_record_names_nothing(tmp_path: Path, text: str) -> None:
    path = tmp_path / "pids.json"
    path.write_text(text)
    assert read_record(path).alive() == []
    assert read_record(tmp_path / "absent.json") == PidRecord("")


def test_a_record_from_an_earlier_boot_names_nothing(sleeper: subprocess.Popen[bytes]) -> None:
    record = PidRecord("another-boot", (recorded(sleeper),))
    assert record.alive() == []
    assert record.find("sleeper", sleeper.pid) is None


def test_merging_keeps_what_still_runs_and_drops_what_ended(
    sleeper: subprocess.Popen[bytes],
) -> None:
    ours = recorded(sleeper)
    old = PidRecord(boot_id(), (ours, recycled(recorded(sleeper, "ended"))))
    me = RecordedProcess.of("me", os.getpid())
    assert me is not None

    assert old.merged([me]).processes == (me, ours)
    assert old.merged([ours, ours]).processes == (ours,)
