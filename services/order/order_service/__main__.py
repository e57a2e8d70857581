"""``python -m order_service``: serve until SIGTERM/SIGINT."""

from __future__ import annotations

from meshkit.server import configure_logging, run_until_signalled
from order_service.config import Settings
from order_service.server import serve


def main() -> None:
    configure_logging("order")
    run_until_signalled(serve(Settings.from_env()))


if __name__ == "__main__":
    main()
