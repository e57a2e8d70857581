"""``python -m notification_service``: serve until SIGTERM/SIGINT;
``python -m notification_service replay-dead-letters``: put dead letters back on the stream."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from meshkit import logs, settings, tracing
from meshkit.server import run_until_signalled
from meshkit.settings import load_or_exit

from .config import Settings
from .replay import replay_dead_letters
from .server import serve

_log = logging.getLogger("notification_service")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m notification_service",
        description="The notification service (no command: serve, configured by NOTIFICATION_*).",
    )
    commands = parser.add_subparsers(dest="command")
    replay = commands.add_parser(
        "replay-dead-letters",
        help="move dead letters back onto the order events stream (after the fix)",
    )
    replay.add_argument("--limit", type=int, default=None, help="at most this many (oldest first)")
    args = parser.parse_args(argv)
    if args.command == "replay-dead-letters":
        if args.limit is not None and args.limit < 1:
            parser.error("--limit must be >= 1")
        # Only Redis: the command runs beside the service, without its port or certificate.
        redis_url = load_or_exit("notification", lambda: settings.REDIS_URL.read(os.environ))
        print(replay_dead_letters(redis_url, limit=args.limit).summary())
        return 0
    config = load_or_exit("notification", Settings.from_env)
    logs.configure("notification")
    tracing.start("notification")
    _log.info(
        "notification: data %s, %d consumers (%s), claim after %d ms, dead letter after %d",
        config.db_path,
        config.consumers,
        ", ".join(config.consumer_names()),
        config.claim_idle_ms,
        config.max_deliveries,
    )
    run_until_signalled(serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
