"""deploy/grafana as Grafana reads it: the provisioning files' structure, and dashboards whose
panels name their data source by uid, carry unique ids and parse as PromQL."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

from meshctl import dashboards
from meshctl.config import REPO_ROOT
from meshctl.prometheus import INTERVAL
from meshctl.registry import CANARY

PROVISIONING = REPO_ROOT / "deploy" / "grafana" / "provisioning"
BOARDS = dashboards.load()
#: A range written into a panel: Grafana's $__rate_interval, never a fixed window (a 1m window
#: holds too few scrapes when zoomed in and hides spikes when zoomed out).
RANGE = re.compile(r"\[([^\]]*)\]")


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _datasources() -> dict[str, dict[str, Any]]:
    [path] = (PROVISIONING / "datasources").glob("*.yaml")
    document = _yaml(path)
    assert document["apiVersion"] == 1
    return {source["uid"]: source for source in document["datasources"]}


def test_the_data_sources_are_prometheus_and_jaeger_with_exemplars_linked_to_traces() -> None:
    sources = _datasources()
    assert {uid: source["type"] for uid, source in sources.items()} == {
        "prometheus": "prometheus",
        "jaeger": "jaeger",
    }
    prometheus, jaeger = sources["prometheus"], sources["jaeger"]
    # Compose sets both to what the container can reach (deploy/compose/compose.yaml).
    assert (prometheus["url"], jaeger["url"]) == ("${PROMETHEUS_URL}", "${JAEGER_URL}")
    assert prometheus["isDefault"] is True
    assert prometheus["jsonData"]["exemplarTraceIdDestinations"] == [
        {"name": "trace_id", "datasourceUid": "jaeger"}
    ]
    # $__rate_interval follows it: it must be the interval the stack's Prometheus scrapes at.
    assert prometheus["jsonData"]["timeInterval"] == INTERVAL


def test_one_file_provider_holds_every_dashboard() -> None:
    [path] = (PROVISIONING / "dashboards").glob("*.yaml")
    document = _yaml(path)
    assert document["apiVersion"] == 1
    [provider] = document["providers"]
    assert provider["type"] == "file"
    assert provider["allowUiUpdates"] is False
    assert provider["options"]["path"].startswith("/")


def test_the_dashboards_are_the_four_the_banner_names_with_unique_uids() -> None:
    assert sorted(board["title"] for board in BOARDS.values()) == sorted(dashboards.TITLES)
    uids = [board["uid"] for board in BOARDS.values()]
    assert len(set(uids)) == len(uids)
    for name, board in BOARDS.items():
        assert board["uid"] == name, "a dashboard's file is named after its uid"
        assert "id" not in board or board["id"] is None, "provisioning assigns the id"


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_panel_ids_are_unique_and_every_panel_names_its_data_source_by_uid(name: str) -> None:
    board = BOARDS[name]
    ids = [panel["id"] for panel in dashboards.panels(board)]
    assert len(set(ids)) == len(ids)
    uids = set(_datasources())
    for panel in dashboards.panels(board):
        if panel["type"] == "row":
            continue
        refs = [panel["datasource"], *(target["datasource"] for target in panel["targets"])]
        for ref in refs:
            assert isinstance(ref, dict), f"{panel['title']}: a data source named, not by uid"
            assert ref["uid"] in uids, f"{panel['title']}: no data source {ref['uid']}"
        assert panel["targets"], f"{panel['title']}: no query"
    for variable in dashboards.variables(board):
        assert variable["datasource"]["uid"] in uids


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_every_query_parses_as_promql_once_grafana_fills_it_in(name: str) -> None:
    board = BOARDS[name]
    values = dashboards.defaults(board)
    for query in dashboards.queries(board):
        promql_parser.parse(dashboards.expand(query.expr, values))
        windows = set(RANGE.findall(query.expr))
        assert windows <= {"$__rate_interval"}, f"{query}: a fixed window {windows}"
    for variable, selector in dashboards.selectors(board):
        assert isinstance(
            promql_parser.parse(dashboards.expand(selector, values)), promql_parser.VectorSelector
        ), variable


def test_every_template_variable_opens_at_all_with_a_regex_for_it() -> None:
    for board in BOARDS.values():
        for variable in dashboards.variables(board):
            assert variable["includeAll"] is True
            assert variable["current"]["value"] == [dashboards.ALL]
            re.compile(variable["allValue"])


def test_the_canary_dashboard_compares_the_registrys_canary_deployments() -> None:
    """Its clusters and jobs are the registry's program names: a rename there must show here."""
    canary = "|".join(program.name for program in CANARY)
    board = BOARDS["canary"]
    values = dashboards.defaults(board)
    seen: list[str] = []

    def matchers(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            for matcher in node.matchers.matchers:
                if matcher.name in ("envoy_cluster_name", "job"):
                    seen.append(matcher.value)

    for query in dashboards.queries(board):
        promql_parser.walk(promql_parser.parse(dashboards.expand(query.expr, values)), matchers)
    assert seen
    assert set(seen) == {canary}
