"""``python -m inventory_service``: serve until SIGTERM/SIGINT."""

from __future__ import annotations

from inventory_service.config import Settings
from inventory_service.server import serve
from meshkit.server import configure_logging, run_until_signalled
from meshkit.settings import SettingsError


def main() -> None:
    configure_logging("inventory")
    try:
        settings = Settings.from_env()
    except SettingsError as error:
        raise SystemExit(f"inventory: {error}") from None
    run_until_signalled(serve(settings))


if __name__ == "__main__":
    main()
