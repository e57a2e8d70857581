"""Keeps the stack's pid record current: ``python -m meshctl.pidlistener <record path>``.

supervisord runs it as an event listener subscribed to PROCESS_STATE (see
deploy/supervisor/supervisord.conf). On every state change it asks supervisord for every
pid, its own included, and rewrites the record (:mod:`meshctl.pidrecord`), so a program that
supervisord restarts is recorded under its new pid. Asking, rather than reading the event,
also covers STARTING, whose event carries no pid, so a program still starting when
supervisord dies is recorded too. When supervisord is gone, stdin ends and so does the listener.
"""

from __future__ import annotations

import os
import sys
import xmlrpc.client
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, TextIO

from supervisor import childutils
from supervisor.xmlrpc import Faults

from meshctl.pidrecord import SUPERVISORD, PidRecord, RecordedProcess, read_record, write_record


class SupervisorRpc(Protocol):
    """The two calls of supervisord's XML-RPC ``supervisor`` namespace the listener uses."""

    def getPID(self) -> int: ...  # noqa: N802 - supervisord's method name

    def getAllProcessInfo(self) -> list[dict[str, Any]]: ...  # noqa: N802 - as above


def snapshot(rpc: SupervisorRpc) -> list[RecordedProcess]:
    """supervisord and every process it has a pid for, as they are now."""
    pids = [(SUPERVISORD, int(rpc.getPID()))]
    pids += [(str(info["name"]), int(info["pid"])) for info in rpc.getAllProcessInfo()]
    return [p for name, pid in pids if (p := RecordedProcess.of(name, pid)) is not None]


def from_event(headers: Mapping[str, str], payload: str) -> list[RecordedProcess]:
    """The process an event names, when it carries a pid (RUNNING, STOPPING, EXITED, ...)."""
    if not headers.get("eventname", "").startswith("PROCESS_STATE"):
        return []
    fields = childutils.get_headers(payload)
    process = RecordedProcess.of(fields.get("processname", ""), int(fields.get("pid", "0")))
    return [] if process is None else [process]


def run(path: Path, rpc: SupervisorRpc, stdin: TextIO, stdout: TextIO) -> None:
    """Serves supervisord's listener protocol until stdin ends, updating the record at
    ``path`` on every event."""
    record = _update(path, read_record(path), rpc, [])
    while True:
        childutils.listener.ready(stdout)
        line = stdin.readline()
        if not line:
            return
        headers = childutils.get_headers(line)
        payload = stdin.read(int(headers["len"]))
        record = _update(path, record, rpc, from_event(headers, payload))
        childutils.listener.ok(stdout)


def _update(
    path: Path, record: PidRecord, rpc: SupervisorRpc, named: list[RecordedProcess]
) -> PidRecord:
    try:
        current = snapshot(rpc)
    except (OSError, xmlrpc.client.Error) as error:
        # supervisord is gone, or shutting down (then it refuses every call, which is no
        # news): the event's own pid is all there is.
        if getattr(error, "faultCode", None) != Faults.SHUTDOWN_STATE:
            print(f"pidlistener: supervisord did not answer ({error})", file=sys.stderr, flush=True)
        current = named
    updated = record.merged(current)
    if updated != record:
        write_record(path, updated)
    return updated


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m meshctl.pidlistener <record path>", file=sys.stderr)
        return 2
    rpc: SupervisorRpc = childutils.getRPCInterface(os.environ).supervisor
    run(Path(argv[0]), rpc, sys.stdin, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
