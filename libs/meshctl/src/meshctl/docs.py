"""The README's table of settings, made from the declarations themselves.

Every variable the launcher and the services read is declared once, with its
default and meaning (meshkit.settings); ``python -m meshctl settings`` prints the table the
README holds between its ``settings`` markers, and a test fails when the two differ.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import inventory_service.config
import notification_service.config
import order_service.config
import payment_service.config
import resilience
from meshctl import cli, config, rollout
from meshkit import logs, settings, tls

BEGIN = "<!-- settings:begin (python -m meshctl settings) -->"
END = "<!-- settings:end -->"


def declared() -> Iterator[tuple[str, settings.Var[Any]]]:
    """(who reads it, the variable) for every declaration, launcher first."""
    launcher = (*config.VARIABLES, cli.LINES, cli.LOGS_FORMAT, *rollout.VARIABLES)
    yield from (("launcher", var) for var in launcher)
    yield "every service", tls.CERTS_DIR
    yield "every service", logs.LOG_LEVEL
    for who, cls in (
        ("order", order_service.config.Settings),
        ("inventory", inventory_service.config.Settings),
        ("payment", payment_service.config.Settings),
        ("notification", notification_service.config.Settings),
    ):
        yield from ((who, var) for var in settings.variables(cls))


def unique(pairs: Iterable[tuple[str, settings.Var[Any]]]) -> dict[str, settings.Var[Any]]:
    """One entry per variable: the first declaration of a name (the launcher's, for a port a
    service also reads)."""
    first: dict[str, settings.Var[Any]] = {}
    for _, var in pairs:
        first.setdefault(var.name, var)
    return first


def settings_table() -> str:
    rows = [
        "| variable | default | allowed | meaning |",
        "|---|---|---|---|",
        *(
            f"| `{var.name}` | `{var.default_text}` | {var.allowed} | {var.doc} |"
            for var in unique(declared()).values()
        ),
        f"| `{resilience.ENV_POLICY_FILE}`, `RESILIENCE_*` | "
        f"`services/order/order_service/resilience.yaml` | a policy file, overrides | "
        "the order service's outbound policy (see `libs/resilience/README.md`) |",
    ]
    return "\n".join([BEGIN, *rows, END])
