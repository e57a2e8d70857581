"""The mesh under one supervisord: `up` (render, start, wait until healthy), `down`, `status`.

``make up`` and the end-to-end tests share this code path: tests build a StackConfig on free
ports in a temp dir with their own redis-server (meshctl.testing) and call :meth:`Stack.up` and
:meth:`Stack.down`, exactly what the CLI does with the defaults.
"""

from __future__ import annotations

import shutil
import sys
import time
import urllib.parse
from pathlib import Path
from typing import TextIO

from meshctl import pki, prometheus, render
from meshctl.config import StackConfig, StackError
from meshctl.envoy import CANARY_RUNTIME_PREFIX, EnvoyAdmin
from meshctl.pidrecord import SUPERVISORD
from meshctl.probes import port_is_free, redis_answers
from meshctl.registry import CANARY, PROGRAMS, WORKLOADS, program
from meshctl.report import ProgramStatus, banner, log_excerpt, start_order, status_table
from meshctl.supervisor import DEFAULT_SHUTDOWN_TIMEOUT_S, Supervisor

DEFAULT_LOG_LINES = 40
ACCESS_LOG_MAX_BYTES = 50 * 1024 * 1024
_POLL_S = 0.2


class Stack:
    """Start, stop and inspect one stack; ``supervisor`` and ``envoy`` reach its parts."""

    def __init__(self, config: StackConfig, *, out: TextIO | None = None) -> None:
        self.config = config
        self._out = out if out is not None else sys.stdout
        self.supervisor = Supervisor(config, self._say)
        self.envoy = EnvoyAdmin(config.admin_url)

    def up(self) -> list[ProgramStatus]:
        """Starts everything (Redis only when nothing answers at REDIS_URL) and waits until it
        all serves. Already running: reports status and changes nothing. Programs left
        running by a supervisord that died are stopped first, then everything starts afresh."""
        c, supervisor = self.config, self.supervisor
        if supervisor.is_running():
            self._say(f"resilient-mesh is already running (supervisord pid {supervisor.pid()})")
            statuses = self.status()
            self._say(status_table(statuses))
            return statuses
        orphans = supervisor.orphans()
        if orphans:
            self._say("supervisord is gone but programs it started still run: stopping them")
            supervisor.stop_recorded(orphans)
        c.pid_record.unlink(missing_ok=True)
        own_redis = not redis_answers(c.redis_url)
        self._check_ports_free(own_redis)
        for directory in (c.run_dir, c.log_dir, c.data_dir):
            directory.mkdir(parents=True, exist_ok=True)
        # A fault set during an earlier run is not carried into this one (Envoy's are not).
        shutil.rmtree(c.faults_dir, ignore_errors=True)
        if c.mtls:
            pki.ensure_certificates(c.certs_dir, WORKLOADS)
        _rotate(c.access_log, ACCESS_LOG_MAX_BYTES)
        environment = render.supervisord_environment(c, own_redis=own_redis)
        c.envoy_conf.write_text(render.envoy_yaml(c))
        c.prometheus_conf.write_text(prometheus.prometheus_yml(c))
        c.supervisor_conf.write_text(render.supervisord_conf(own_redis=own_redis))
        supervisor.start(environment)
        statuses = self.wait_healthy()
        self._say(banner(c, own_redis=own_redis))
        return statuses

    def down(self, timeout_s: float = DEFAULT_SHUTDOWN_TIMEOUT_S) -> None:
        """Stops every program and supervisord, and waits until none of their pids is left.
        When supervisord has died, stops what it started by the pids recorded for it."""
        supervisor = self.supervisor
        if supervisor.is_running():
            supervisor.shutdown(timeout_s)
        else:
            orphans = supervisor.orphans()
            if not orphans:
                self._say("resilient-mesh is not running")
                return
            self._say("supervisord is gone but programs it started still run: stopping them")
            supervisor.stop_recorded(orphans)
        self.config.pid_record.unlink(missing_ok=True)
        self._say("resilient-mesh stopped")

    def status(self) -> list[ProgramStatus]:
        """Every program's supervisor state and its health; empty when the stack is down."""
        if not self.supervisor.is_running():
            return []
        statuses = []
        for info in sorted(self.supervisor.process_info(), key=lambda i: start_order(i["name"])):
            name, state = str(info["name"]), str(info["statename"])
            health = self._health(name) if state == "RUNNING" else "-"
            statuses.append(ProgramStatus(name, state, int(info["pid"]), health))
        return statuses

    def _health(self, name: str) -> str:
        known = program(name)
        return "unknown program" if known is None else known.probe(self.config)

    def wait_healthy(self, timeout_s: float | None = None) -> list[ProgramStatus]:
        """Blocks until every program runs and serves; raises StackError with logs if not."""
        timeout_s = timeout_s or self.config.startup_timeout_s
        deadline = time.monotonic() + timeout_s
        statuses: list[ProgramStatus] = []
        while time.monotonic() < deadline:
            statuses = self.status()
            if not statuses:
                raise StackError(
                    "supervisord is not running:\n" + log_excerpt(self.config, [SUPERVISORD])
                )
            fatal = [s.name for s in statuses if s.state in ("FATAL", "EXITED", "STOPPED")]
            if fatal:
                raise StackError(
                    f"{', '.join(fatal)} could not start:\n"
                    + status_table(statuses)
                    + "\n"
                    + log_excerpt(self.config, fatal)
                )
            if all(s.ok for s in statuses):
                return statuses
            time.sleep(_POLL_S)
        failing = [s.name for s in statuses if not s.ok]
        raise StackError(
            f"not healthy after {timeout_s:.0f}s: {', '.join(failing)}\n"
            + status_table(statuses)
            + "\n"
            + log_excerpt(self.config, failing)
        )

    def restart(self, name: str) -> None:
        """``supervisorctl restart <name>``, then waits until the whole stack serves again."""
        result = self.supervisor.ctl("restart", name)
        if result.returncode != 0:
            raise StackError(f"supervisorctl restart {name}: {result.stdout}{result.stderr}")
        self.wait_healthy()

    def set_canary_weights(self, v1: int, v2: int) -> None:
        """Moves payment traffic live (Envoy runtime keys; relative weights, not percentages)."""
        if v1 < 0 or v2 < 0 or v1 + v2 == 0:
            raise ValueError(f"weights must be >= 0 and not both 0, got {v1}/{v2}")
        keys = (f"{CANARY_RUNTIME_PREFIX}.{p.name}" for p in CANARY)
        self.envoy.set_runtime(dict(zip(keys, (v1, v2), strict=True)))

    def logs(self, lines: int = DEFAULT_LOG_LINES) -> str:
        """The last ``lines`` of every program's log, then Envoy's access log, supervisord's
        own log last."""
        configured = self.supervisor.configured()
        names = [
            p.name
            for p in PROGRAMS
            if not p.listener and (p.name in configured or not p.only_without_redis)
        ]
        access = self.config.access_log.stem  # log_excerpt finds a log by its file's stem
        return log_excerpt(self.config, [*names, access, SUPERVISORD], lines)

    def _say(self, text: str) -> None:
        print(text, file=self._out, flush=True)

    def _check_ports_free(self, own_redis: bool) -> None:
        c = self.config
        wanted = dict(c.ports)
        if own_redis:
            wanted["REDIS_URL"] = urllib.parse.urlsplit(c.redis_url).port or 6379
        busy = [f"{var}={port}" for var, port in wanted.items() if not port_is_free(c.host, port)]
        if busy:
            raise StackError(
                "ports already in use: "
                + ", ".join(busy)
                + " (another stack? `make status`; or override those variables)"
            )


def _rotate(path: Path, max_bytes: int) -> None:
    """Keeps one previous generation of a log that only ever grows."""
    if path.is_file() and path.stat().st_size > max_bytes:
        path.replace(path.with_name(path.name + ".1"))
