"""``python -m inventory_service``: serve until SIGTERM/SIGINT."""

from __future__ import annotations

from inventory_service.config import Settings
from inventory_service.server import serve
from meshkit import logs, tracing
from meshkit.server import run_until_signalled
from meshkit.settings import load_or_exit


def main() -> None:
    settings = load_or_exit("inventory", Settings.from_env)
    logs.configure("inventory")
    tracing.start("inventory")
    run_until_signalled(serve(settings))


if __name__ == "__main__":
    main()
