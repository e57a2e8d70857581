"""The Grafana dashboards of deploy/grafana/dashboards as data: every panel's PromQL as Grafana
sends it when the template variables are at their defaults, so tests can run each query
against the stack's real Prometheus.

The JSON files are the source (edit a dashboard in Grafana, export it over its file); this
module only reads them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshctl.config import REPO_ROOT
from meshctl.prometheus import INTERVAL

DASHBOARDS_DIR = REPO_ROOT / "deploy" / "grafana" / "dashboards"
#: Their titles, as the banner names them (a test keeps this equal to the files).
TITLES = ("Mesh", "Resilience", "Canary", "Redis")
#: What a template variable set to "All" holds until its allValue replaces it.
ALL = "$__all"
#: Grafana's $__rate_interval is max($__interval + scrape interval, 4 x scrape interval), with
#: the scrape interval the data source's timeInterval. Four scrapes is its smallest value, the
#: window that sees the fewest samples: a query with data there has data at any zoom.
RATE_INTERVAL = f"{4 * int(INTERVAL.removesuffix('s'))}s"
#: ``label_values(<selector>, <label>)``: a query variable's values, read from a selector.
_LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*\w+\s*\)$", re.DOTALL)
_VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)\}")


@dataclass(frozen=True, slots=True)
class PanelQuery:
    """One target of one panel."""

    dashboard: str  # the dashboard's uid
    panel: str  # the panel's title
    ref_id: str
    expr: str  # as written, with its $variables

    def __str__(self) -> str:
        return f"{self.dashboard} / {self.panel} [{self.ref_id}]"


def load(directory: Path = DASHBOARDS_DIR) -> dict[str, dict[str, Any]]:
    """Every dashboard, by file name without ``.json``."""
    return {
        path.stem: json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(directory.glob("*.json"))
    }


def panels(board: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside a collapsed row too (rows themselves included)."""
    for panel in board.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def queries(board: Mapping[str, Any]) -> Iterator[PanelQuery]:
    for panel in panels(board):
        for target in panel.get("targets", []):
            yield PanelQuery(board["uid"], panel["title"], target["refId"], target["expr"])


def variables(board: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list(board.get("templating", {}).get("list", []))


def defaults(board: Mapping[str, Any]) -> dict[str, str]:
    """Each template variable's value as the dashboard opens: "All" is its allValue, several
    values are Grafana's regex alternation of them."""
    values: dict[str, str] = {}
    for variable in variables(board):
        current = variable["current"]["value"]
        chosen = current if isinstance(current, list) else [current]
        if ALL in chosen:
            values[variable["name"]] = variable["allValue"]
        else:
            values[variable["name"]] = "|".join(re.escape(value) for value in chosen)
    return values


def selectors(board: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(variable name, the selector whose label values it offers) of each query variable."""
    for variable in variables(board):
        if variable["type"] != "query":
            continue
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        match = _LABEL_VALUES.match(text.strip())
        if match is None:
            raise ValueError(f"{board['uid']}: ${variable['name']} is not label_values(...)")
        yield variable["name"], match["selector"]


def expand(expr: str, values: Mapping[str, str]) -> str:
    """``expr`` as Grafana sends it: $__rate_interval and every template variable replaced; a
    variable the dashboard does not define raises KeyError."""
    own = {**values, "__rate_interval": RATE_INTERVAL}
    return _VARIABLE.sub(lambda m: own[m[1] or m[2]], expr)
