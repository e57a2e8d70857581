"""After supervisord is killed, `make status|down|up` still find every process it started."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from meshctl.cli import main
from meshctl.config import StackConfig
from meshctl.pidrecord import pid_alive, stop_processes
from meshctl.registry import PORTS, PROGRAMS, RECORDER
from meshctl.stack import Stack
from meshctl.testing import assert_all_gone
from meshkit.testing import free_ports, redis_server, wait_until
from resilience import SYSTEM_CLOCK

pytestmark = [pytest.mark.stack, pytest.mark.timeout(60)]

#: What outlives a killed supervisord: all but the recorder, which reads its events and ends too.
MESH = tuple(p.name for p in PROGRAMS if p is not RECORDER)


def cli_env(var_dir: Path, redis_url: str) -> dict[str, str]:
    """What `make up|status|down` would see: every port free, state under ``var_dir``."""
    ports = free_ports(len(PORTS))
    env = {port.var: str(number) for port, number in zip(PORTS, ports, strict=True)}
    return {**env, "MESH_VAR_DIR": str(var_dir), "REDIS_URL": redis_url}


@pytest.fixture
def own_redis_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A stack that runs its own redis-server (nothing answers at REDIS_URL): Redis is one
    of the orphans too. Whatever a failing test leaves behind is stopped by recorded pid."""
    env = cli_env(tmp_path, f"redis://127.0.0.1:{free_ports(1)[0]}/0")
    yield env
    leave_nothing(env)


def leave_nothing(env: Mapping[str, str]) -> None:
    stack = Stack(StackConfig.from_env(env))
    if stack.supervisor.is_running():
        stack.down()
    stop_processes(stack.supervisor.recorded().alive(), clock=SYSTEM_CLOCK)


def kill_supervisord(stack: Stack) -> dict[str, int]:
    """SIGKILLs supervisord; returns the pids it had, once its event listener has ended too."""
    pids = stack.supervisor.pids()
    os.kill(pids["supervisord"], signal.SIGKILL)
    wait_until(lambda: not pid_alive(pids["supervisord"]), timeout_s=5, what="supervisord")
    # The recorder reads supervisord's events from a pipe, so it ends with supervisord.
    wait_until(lambda: not pid_alive(pids[RECORDER.name]), timeout_s=5, what="the recorder")
    return pids


def test_status_reports_each_orphan_and_down_stops_them_all(
    own_redis_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    env = own_redis_env
    stack = Stack(StackConfig.from_env(env))
    assert main(["up"], env) == 0
    pids = kill_supervisord(stack)
    capsys.readouterr()

    assert main(["status"], env) == 1
    status = capsys.readouterr().out
    assert "supervisord is gone" in status
    for name in MESH:
        assert re.search(rf"^  {name} +ORPHANED +{pids[name]}$", status, re.M), status
        assert pid_alive(pids[name]), f"{name} died with supervisord"

    assert main(["down"], env) == 0
    assert "resilient-mesh stopped" in capsys.readouterr().out
    assert_all_gone(pids)

    assert main(["status"], env) == 0
    assert "not running" in capsys.readouterr().out
    assert main(["down"], env) == 0


def test_up_after_supervisord_was_killed_stops_the_orphans_and_starts_healthy(
    own_redis_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    env = own_redis_env
    stack = Stack(StackConfig.from_env(env))
    assert main(["up"], env) == 0
    orphans = kill_supervisord(stack)
    capsys.readouterr()

    assert main(["up"], env) == 0

    out = capsys.readouterr().out
    assert "stopping by recorded pid" in out
    # The stack's own Redis was an orphan too: stopped, then started again under supervisord.
    assert "started by the stack" in out
    assert_all_gone(orphans)
    assert main(["status"], env) == 0
    pids = stack.supervisor.pids()
    assert set(pids) == {"supervisord", RECORDER.name, *MESH}
    assert main(["down"], env) == 0
    assert_all_gone(pids)


def test_a_program_supervisord_restarted_is_stopped_by_its_new_pid(tmp_path: Path) -> None:
    with redis_server() as redis_proc:
        env = cli_env(tmp_path, redis_proc.url)
        stack = Stack(StackConfig.from_env(env))
        try:
            assert main(["up"], env) == 0
            old = stack.supervisor.pids()["inventory"]
            os.kill(old, signal.SIGKILL)

            def restarted() -> int | None:
                pid = stack.supervisor.pids().get("inventory")
                recorded = stack.supervisor.recorded().find("inventory", pid) if pid else None
                return pid if pid != old and recorded is not None else None

            wait_until(restarted, timeout_s=15, what="inventory restarted and recorded")
            new = restarted()
            assert new is not None
            pids = kill_supervisord(stack)
            assert pids["inventory"] == new

            assert main(["down"], env) == 0

            assert not pid_alive(new)
            assert_all_gone(pids)
        finally:
            leave_nothing(env)
