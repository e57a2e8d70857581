"""``python -m inventory_service``: serve until SIGTERM/SIGINT."""

from __future__ import annotations

from inventory_service.config import Settings
from inventory_service.server import serve
from meshkit.server import configure_logging, run_until_signalled


def main() -> None:
    configure_logging("inventory")
    run_until_signalled(serve(Settings.from_env()))


if __name__ == "__main__":
    main()
