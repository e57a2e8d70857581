"""A dashboard's queries as Grafana sends them: variables at their defaults, and
$__rate_interval at its smallest."""

from __future__ import annotations

from typing import Any

import pytest

from meshctl import dashboards
from meshctl.prometheus import INTERVAL


def _variable(name: str, current: list[str], all_value: str = ".+") -> dict[str, Any]:
    return {
        "name": name,
        "type": "query",
        "allValue": all_value,
        "current": {"value": current},
        "query": {"query": f"label_values(up{{job=~'$other'}}, {name})"},
    }


def _board(*variables: dict[str, Any]) -> dict[str, Any]:
    target = {"refId": "A", "expr": 'rate(x{a=~"$service"}[$__rate_interval])'}
    row = {"type": "row", "title": "r", "panels": [{"title": "inside", "targets": [target]}]}
    return {
        "uid": "b",
        "templating": {"list": list(variables)},
        "panels": [{"title": "p", "targets": [target]}, row],
    }


def test_the_rate_interval_is_four_scrapes() -> None:
    assert INTERVAL == "5s"
    assert dashboards.RATE_INTERVAL == "20s"


def test_all_is_the_variables_all_value_and_several_values_an_alternation() -> None:
    board = _board(
        _variable("service", [dashboards.ALL], all_value="mesh[.].+"),
        _variable("method", ["Charge", "Get.Payment"]),
    )
    assert dashboards.defaults(board) == {"service": "mesh[.].+", "method": r"Charge|Get\.Payment"}


def test_expand_fills_in_every_variable_in_both_spellings() -> None:
    values = {"service": "s.+"}
    assert dashboards.expand('x{a=~"$service", b=~"${service}"}[$__rate_interval]', values) == (
        'x{a=~"s.+", b=~"s.+"}[20s]'
    )
    with pytest.raises(KeyError):
        dashboards.expand("x{a=~'$undefined'}", values)


def test_queries_include_panels_inside_rows() -> None:
    assert [str(q) for q in dashboards.queries(_board())] == ["b / p [A]", "b / inside [A]"]


def test_selectors_are_read_from_label_values() -> None:
    board = _board(_variable("service", [dashboards.ALL]))
    assert list(dashboards.selectors(board)) == [("service", "up{job=~'$other'}")]
    board["templating"]["list"][0]["query"] = {"query": "query_result(up)"}
    with pytest.raises(ValueError, match=r"\$service is not label_values"):
        list(dashboards.selectors(board))
