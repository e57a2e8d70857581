"""``python -m load`` (``make load``): Locust's shoppers against the running mesh's edge.

With its web UI on 127.0.0.1 (start, stop and watch a run there), or ``--headless`` for
scripts and tests: it runs for ``--run-time`` and writes Locust's CSV statistics
(``<csv>_stats.csv``, ``_failures.csv``, ``_stats_history.csv``, ``_exceptions.csv``). The edge
is the one ``make up`` listens on (EDGE_PORT) unless ``--host`` says otherwise; arguments after
``--`` go to Locust as they are.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from meshctl.config import REPO_ROOT, VAR_DIR, StackConfig
from meshkit.settings import SettingsError

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
DEFAULT_WEB_PORT = 8089
CSV_PREFIX = "locust"


def locust_argv(argv: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """The Locust command line for ``argv`` (this module's arguments)."""
    parser = argparse.ArgumentParser(prog="python -m load", description=__doc__)
    parser.add_argument("--users", type=int, default=10, help="users at full strength")
    parser.add_argument("--spawn-rate", type=float, default=5, help="users started per second")
    parser.add_argument("--run-time", default="", help="e.g. 60s or 5m (headless default: 60s)")
    parser.add_argument("--pace", type=float, default=1.0, help="tasks per second of each user")
    parser.add_argument("--headless", action="store_true", help="no web UI; write CSV stats")
    parser.add_argument(
        "--csv-dir", type=Path, help="where --headless writes its CSV (default: var/load)"
    )
    parser.add_argument("--web-port", type=int, default=DEFAULT_WEB_PORT, help="web UI port")
    parser.add_argument("--host", help="the edge, host:port (default: the one make up starts)")
    parser.add_argument("locust_args", nargs="*", help="passed to Locust (after --)")
    args = parser.parse_args(argv)
    host = args.host or StackConfig.from_env(env).edge_target
    command = [
        sys.executable,
        "-m",
        "locust",
        "--locustfile",
        str(LOCUSTFILE),
        "--host",
        host,
        "--users",
        str(args.users),
        "--spawn-rate",
        str(args.spawn_rate),
        "--pace",
        str(args.pace),
    ]
    if args.headless:
        csv_dir = args.csv_dir or REPO_ROOT / VAR_DIR.read(env) / "load"
        csv_dir.mkdir(parents=True, exist_ok=True)
        command += [
            "--headless",
            "--run-time",
            args.run_time or "60s",
            "--csv",
            str(csv_dir / CSV_PREFIX),
            "--only-summary",
        ]
    else:
        command += ["--web-host", "127.0.0.1", "--web-port", str(args.web_port)]
        if args.run_time:
            command += ["--run-time", args.run_time]
    return command + args.locust_args


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] = os.environ) -> None:
    try:
        command = locust_argv(sys.argv[1:] if argv is None else argv, env)
    except SettingsError as error:  # as every service does with a bad value
        print(f"load: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    # The locustfile imports `load` from the checkout, whatever the caller's directory.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
    )
    os.execv(command[0], command)  # noqa: S606 (Locust replaces this process: its signals, its exit code)


if __name__ == "__main__":
    main()
