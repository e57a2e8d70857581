"""``python -m order_service``: serve until SIGTERM/SIGINT."""

from __future__ import annotations

from meshkit import logs, tracing
from meshkit.server import run_until_signalled
from meshkit.settings import load_or_exit
from order_service.config import Settings
from order_service.server import serve


def main() -> None:
    settings = load_or_exit("order", Settings.from_env)
    logs.configure("order")
    tracing.start("order")
    run_until_signalled(serve(settings))


if __name__ == "__main__":
    main()
