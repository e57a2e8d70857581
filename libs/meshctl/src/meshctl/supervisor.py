"""The stack's supervisord: start it, ask it (XML-RPC on its unix socket), stop it, and stop
what it started after it died, by the pids its event listener recorded."""

from __future__ import annotations

import configparser
import contextlib
import os
import signal
import subprocess
import time
import xmlrpc.client
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from meshctl.config import StackConfig, StackError
from meshctl.pidrecord import (
    SUPERVISORD,
    PidRecord,
    RecordedProcess,
    cmdline,
    pid_alive,
    read_record,
    stop_processes,
)
from meshctl.registry import PROGRAMS
from meshctl.render import PIDFILE, SOCKET_FILE
from meshctl.report import log_excerpt
from resilience import SYSTEM_CLOCK

DEFAULT_SHUTDOWN_TIMEOUT_S = 30.0
_POLL_S = 0.2
_START_TIMEOUT_S = 10.0


class Supervisor:
    """The supervisord of one stack (its config, socket and pidfile live in the run dir)."""

    def __init__(self, config: StackConfig, say: Callable[[str], None]) -> None:
        self.config = config
        self._say = say

    def pid(self) -> int | None:
        """supervisord's pid if it is running, else None: the pid in its pidfile, while that is
        still the process recorded under it (so a recycled pid does not count)."""
        try:
            pid = int((self.config.run_dir / PIDFILE).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        recorded = self.recorded().find(SUPERVISORD, pid)
        if recorded is not None:
            return pid if recorded.is_alive() else None
        # Not recorded yet (the recorder starts just after it): its command line tells.
        ours = pid_alive(pid) and str(self.config.supervisor_conf) in cmdline(pid)
        return pid if ours else None

    def is_running(self) -> bool:
        return self.pid() is not None

    def recorded(self) -> PidRecord:
        return read_record(self.config.pid_record)

    def orphans(self) -> list[RecordedProcess]:
        """What supervisord started and still runs although supervisord does not (so empty
        while it runs), found by the pids recorded for it."""
        if self.is_running():
            return []
        return self.recorded().alive()

    def configured(self) -> set[str]:
        """The programs the last `up` gave supervisord (Redis is one only when it ran its own)."""
        parser = configparser.RawConfigParser()
        parser.read(self.config.supervisor_conf)
        return {name.partition(":")[2] for name in parser.sections() if ":" in name}

    def process_info(self) -> list[dict[str, Any]]:
        """supervisord's view of every program (name, statename, pid, ...)."""
        info: list[dict[str, Any]] = self._rpc().getAllProcessInfo()
        return info

    def pids(self) -> dict[str, int]:
        """Every live pid of the stack: supervisord and each running program."""
        supervisord = self.pid()
        if supervisord is None:
            return {}
        pids = {SUPERVISORD: supervisord}
        pids.update({str(i["name"]): int(i["pid"]) for i in self.process_info() if i["pid"]})
        return pids

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Runs ``supervisorctl`` against this stack, e.g. ``ctl("restart", "inventory")``."""
        conf = str(self.config.supervisor_conf)
        return subprocess.run(
            [self.config.python, "-m", "supervisor.supervisorctl", "-c", conf, *args],
            capture_output=True,
            text=True,
            check=False,
        )

    def start(self, env: Mapping[str, str]) -> None:
        """Starts supervisord on the rendered config with ``env`` added to this process's
        environment, and returns once it answers."""
        conf = str(self.config.supervisor_conf)
        started = subprocess.run(
            [self.config.python, "-m", "supervisor.supervisord", "-c", conf],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            check=False,
        )
        if started.returncode != 0:
            raise StackError(f"supervisord failed to start:\n{started.stdout}{started.stderr}")
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.is_running():
                with contextlib.suppress(OSError):
                    self.process_info()
                    return
            time.sleep(0.05)
        raise StackError("supervisord did not come up:\n" + log_excerpt(self.config, [SUPERVISORD]))

    def shutdown(self, timeout_s: float = DEFAULT_SHUTDOWN_TIMEOUT_S) -> None:
        """Stops every program and supervisord, and waits until none of their pids is left."""
        try:
            pids = self.pids()
        except OSError:  # supervisord runs but does not answer: what we know is its pid
            pids = {SUPERVISORD: self.pid() or 0}
        try:
            self._rpc().shutdown()
        except (OSError, xmlrpc.client.Fault) as error:
            self._say(f"supervisord did not accept shutdown ({error}); stopping by pid")
            _signal_all(pids.values(), signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(pid_alive(p) for p in pids.values()):
            time.sleep(_POLL_S)
        # What supervisord failed to stop, or no longer knew of, goes by its recorded pid.
        self.stop_recorded(self.recorded().alive())
        left = {name: pid for name, pid in pids.items() if pid_alive(pid)}
        if left:
            # supervisord gave up on them (or died): they are ours, so kill them by pid.
            _signal_all(left.values(), signal.SIGKILL)
            time.sleep(_POLL_S)
            left = {name: pid for name, pid in left.items() if pid_alive(pid)}
            if left:
                raise StackError(f"still running after shutdown: {left}")

    def stop_recorded(self, processes: Sequence[RecordedProcess]) -> None:
        """Stops recorded processes, each only while it is still the one recorded: supervisord
        first (it stops the rest itself), then the programs in supervisord's stop order."""
        if not processes:
            return
        ordered = sorted(processes, key=_stop_order)
        self._say(f"stopping by recorded pid: {_format_pids(ordered)}")
        left = stop_processes(ordered, clock=SYSTEM_CLOCK)
        if left:
            raise StackError(f"still running after SIGTERM and SIGKILL: {_format_pids(left)}")

    def _rpc(self) -> Any:
        from supervisor.xmlrpc import SupervisorTransport

        socket_url = f"unix://{self.config.run_dir / SOCKET_FILE}"
        transport = SupervisorTransport(None, None, socket_url)
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport).supervisor


def _stop_order(process: RecordedProcess) -> int:
    # supervisord's priorities reversed: order first, Redis and the recorder last.
    order = [SUPERVISORD, *(p.name for p in reversed(PROGRAMS))]
    return order.index(process.name) if process.name in order else len(order)


def _format_pids(processes: Sequence[RecordedProcess]) -> str:
    return ", ".join(f"{p.name} (pid {p.pid})" for p in processes)


def _signal_all(pids: Iterable[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
