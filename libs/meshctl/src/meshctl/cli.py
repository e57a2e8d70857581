"""``python -m meshctl up|down|status|logs|canary|fault|rollout``: what the Makefile's targets
run."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence

from meshctl import faults, logview, rollout
from meshctl.config import StackConfig, StackError
from meshctl.report import orphan_table, status_table
from meshctl.stack import DEFAULT_LOG_LINES, Stack
from meshkit import settings
from meshkit.settings import SettingsError

Command = Callable[[Stack, argparse.Namespace, Mapping[str, str]], int]

LINES = settings.integer(
    "LINES", DEFAULT_LOG_LINES, lo=1, hi=100_000, doc="lines of each log `make logs` shows"
)
LOGS_FORMAT = settings.choice(
    "LOGS_FORMAT",
    "text",
    ("text", "json"),
    doc="how `make logs` shows JSON lines: text, one short line each; json, as written",
)


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] = os.environ) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m meshctl",
        description="Start, stop and inspect the mesh under supervisord (make up/down/...).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="start the mesh and wait until it is healthy")
    commands.add_parser("down", help="stop everything `up` started")
    commands.add_parser("status", help="every program's state and health")
    commands.add_parser("logs", help="tail every log (LINES=n, LOGS_FORMAT=json)")
    commands.add_parser("settings", help="print the README's table of every setting")
    canary = commands.add_parser("canary", help="set payment v1/v2 weights live")
    canary.add_argument("v1", type=int)
    canary.add_argument("v2", type=int)
    fault = commands.add_parser(
        "fault", help="put faults on, or clear them, live; with no options, list them"
    )
    faults.add_arguments(fault)
    commands.add_parser(
        "rollout", help="step payment v2 up, promote or roll back on its metrics (ROLLOUT_*)"
    )
    args = parser.parse_args(argv)
    if args.command == "settings":
        from meshctl.docs import settings_table  # imports every service's settings

        print(settings_table())
        return 0
    try:
        stack = Stack(StackConfig.from_env(env))
        return _COMMANDS[args.command](stack, args, env)
    except SettingsError as error:  # as every service does with a bad value
        print(f"meshctl: {error}", file=sys.stderr)
        return 2
    except faults.FaultError as error:
        print(f"meshctl {args.command}: {error}", file=sys.stderr)
        return 2
    except (StackError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def _up(stack: Stack, _args: argparse.Namespace, _env: Mapping[str, str]) -> int:
    try:
        statuses = stack.up()
    except StackError:
        if stack.supervisor.is_running():
            print("the stack is left running for inspection: make logs; make down", file=sys.stderr)
        raise
    return 0 if all(s.ok for s in statuses) else 1


def _down(stack: Stack, _args: argparse.Namespace, _env: Mapping[str, str]) -> int:
    stack.down()
    return 0


def _status(stack: Stack, _args: argparse.Namespace, _env: Mapping[str, str]) -> int:
    """0: every program serves, or nothing runs; 1: something does not serve, or supervisord
    died and left programs running (orphans)."""
    statuses = stack.status()
    if not statuses:
        orphans = stack.supervisor.orphans()
        if orphans:
            print("resilient-mesh: supervisord is gone, its programs still run (make down)")
            print(orphan_table(orphans))
            return 1
        print("resilient-mesh is not running (make up)")
        return 0
    pid, edge = stack.supervisor.pid(), stack.config.edge_target
    print(f"resilient-mesh: supervisord pid {pid}, edge {edge}")
    print(status_table(statuses))
    return 0 if all(s.ok for s in statuses) else 1


def _logs(stack: Stack, _args: argparse.Namespace, env: Mapping[str, str]) -> int:
    lines, as_written = LINES.read(env), LOGS_FORMAT.read(env) == "json"
    tails = stack.logs(lines)
    print(tails if as_written else logview.human_lines(tails))
    return 0


def _canary(stack: Stack, args: argparse.Namespace, _env: Mapping[str, str]) -> int:
    if not stack.supervisor.is_running():
        raise StackError("resilient-mesh is not running (make up)")
    stack.set_canary_weights(args.v1, args.v2)
    print(f"payment weights now v1={args.v1} v2={args.v2}")
    return 0


def _fault(stack: Stack, args: argparse.Namespace, _env: Mapping[str, str]) -> int:
    request = faults.parse_request(args)  # before anything else: a bad value is exit 2
    if not stack.supervisor.is_running():
        raise StackError("resilient-mesh is not running (make up)")
    faults.run(request, stack.config.admin_url, stack.config.faults_dir)
    return 0


#: `make rollout`'s exit status when v2 was rolled back (1 is an error, 2 a bad setting).
ROLLED_BACK = 3
#: The decisions of every rollout, one Grafana annotation a line (meshctl.rollout).
ROLLOUT_LOG = "rollout.jsonl"


def _rollout(stack: Stack, _args: argparse.Namespace, env: Mapping[str, str]) -> int:
    plan = rollout.Plan.from_env(env)
    if not stack.supervisor.is_running():
        raise StackError("resilient-mesh is not running (make up)")

    def say(text: str) -> None:
        print(text, flush=True)

    def set_weight(v2: int) -> None:
        stack.set_canary_weights(100 - v2, v2)

    say(
        f"rolling out {rollout.CANARY_CLUSTER}: steps {', '.join(map(str, plan.steps))} then 100,"
        f" a check every {plan.interval_s} s, rollback after {plan.max_failed_checks} failed"
        f" checks (decisions in {stack.config.run_dir / ROLLOUT_LOG})"
    )
    runner = rollout.Rollout(
        plan,
        rollout.PrometheusMetrics(stack.config.prometheus_url),
        set_weight,
        report=rollout.DecisionLog(stack.config.run_dir / ROLLOUT_LOG, say),
    )
    try:
        promoted = runner.run()
    except KeyboardInterrupt:
        set_weight(0)  # a canary half-way is no state to leave behind
        say(f"interrupted: {rollout.CANARY_CLUSTER} rolled back to 0%")
        return 130
    return 0 if promoted else ROLLED_BACK


_COMMANDS: Mapping[str, Command] = {
    "up": _up,
    "down": _down,
    "status": _status,
    "logs": _logs,
    "canary": _canary,
    "fault": _fault,
    "rollout": _rollout,
}
