"""``python -m payment_service``: one payment deployment, configured by PAYMENT_* variables."""

from __future__ import annotations

import logging
import sys

from meshkit import logs, tracing
from meshkit.server import run_until_signalled
from meshkit.settings import load_or_exit

from .config import Settings
from .server import serve

_log = logging.getLogger("payment_service")


def main() -> int:
    settings = load_or_exit("payment", Settings.from_env)
    logs.configure("payment", version=settings.version)
    tracing.start("payment", version=settings.version)
    _log.info(
        "payment %s: data %s, fault rate %s (%s), latency %d ms",
        settings.version,
        settings.db_path,
        settings.fault_rate,
        settings.fault_code.name,
        settings.latency_ms,
    )
    run_until_signalled(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
