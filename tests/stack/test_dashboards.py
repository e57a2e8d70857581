"""Every panel of every Grafana dashboard, run against the stack's real Prometheus (started
the way `make up` starts it) while orders go through a mesh whose payment fails 30% of charges:
each query names only metrics that exist, and each one draws something."""

from __future__ import annotations

import contextlib
import json
import math
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from itertools import count
from typing import Any

import grpc
import promql_parser
import pytest
import yaml

from mesh.common.v1 import money_pb2
from mesh.order.v1 import order_pb2, order_pb2_grpc
from meshctl import dashboards
from meshctl.stack import Stack
from meshctl.testing import running_stack
from meshkit.testing import wait_until

pytestmark = pytest.mark.stack

#: Charges fail often enough for every resilience signal to move (retries, the budget running
#: out, breakers opening), with stock for any number of orders.
#: One customer places every order (20 a look): no per-customer rate limit.
FAULT = {
    "PAYMENT_FAULT_RATE": "0.3",
    "INVENTORY_SEED_STOCK": "1000000",
    "ORDER_RATE_PER_S": "0",
}
#: Data shows within ~15 s (two scrapes 5 s apart, then a rule evaluation); more than twice
#: that before calling it a failure.
WAIT_S = 40.0
ORDERS_PER_LOOK = 20
BOARDS = dashboards.load()
QUERIES = [
    (query, dashboards.expand(query.expr, dashboards.defaults(board)))
    for board in BOARDS.values()
    for query in dashboards.queries(board)
]
CHARGE = "/mesh.payment.v1.PaymentService/Charge"
#: What the fault must show beyond a line at 0, each in one of a few ways: (dashboard uid,
#: panel title, labels of a series whose value is above 0).
FAULT_SHOWN: dict[str, list[tuple[str, str, dict[str, str]]]] = {
    "payment answers UNAVAILABLE": [
        (
            "mesh",
            "Failed calls by status code",
            {"grpc_method": "Charge", "grpc_code": "UNAVAILABLE"},
        )
    ],
    "Envoy counts v1's failures": [
        ("canary", "gRPC failures per deployment", {"envoy_cluster_name": "payment_v1"})
    ],
    # Retried, or refused by the retry budget: which one depends on the budget's kind and state.
    "Charge's failures reach the retry policy": [
        ("resilience", "Retries", {"method": CHARGE}),
        ("resilience", "Retry budget exhausted", {"method": CHARGE}),
    ],
}


def api(stack: Stack, path: str, **params: str) -> Any:
    url = f"{stack.config.prometheus_url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (http, built here)
        body = json.load(response)
    assert body["status"] == "success", body
    return body["data"]


def drawn(result: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The series a panel would draw a point for (NaN, as from a quantile of no calls, is none)."""
    return [sample for sample in result if not math.isnan(float(sample["value"][1]))]


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("dashboards"), FAULT) as running:
        yield running


@pytest.fixture(scope="module")
def empty_after_load(faulty: Stack) -> set[str]:
    """Orders through the edge until every panel query has data and the fault shows, at most
    WAIT_S; what still had none (or what the fault did not show) by then."""
    empty = {str(query) for query, _ in QUERIES}
    unseen = set(FAULT_SHOWN)
    skus = (f"SKU-{1 + n % 24:04d}" for n in count())
    with grpc.insecure_channel(faulty.config.edge_target) as channel:
        orders = order_pb2_grpc.OrderServiceStub(channel)

        def shows(series: list[dict[str, Any]], labels: dict[str, str]) -> bool:
            return any(
                float(sample["value"][1]) > 0 and labels.items() <= sample["metric"].items()
                for sample in series
            )

        def every_panel_drawn() -> bool:
            for _ in range(ORDERS_PER_LOOK):
                # A FAILED order is an answer (OK): payment's faults end in compensation.
                orders.CreateOrder(
                    order_pb2.CreateOrderRequest(
                        customer_id="cust-dashboards",
                        request_id=f"dashboards-{uuid.uuid4()}",
                        lines=[money_pb2.Line(sku=next(skus), quantity=1)],
                    ),
                    timeout=10,
                )
            awaited = {(d, p) for name in unseen for d, p, _ in FAULT_SHOWN[name]}
            series: dict[tuple[str, str], list[dict[str, Any]]] = {}
            for query, promql in QUERIES:
                panel = (query.dashboard, query.panel)
                if str(query) in empty or panel in awaited:
                    drawn_now = drawn(api(faulty, "query", query=promql)["result"])
                    series.setdefault(panel, []).extend(drawn_now)
                    if drawn_now:
                        empty.discard(str(query))
            for name in list(unseen):
                if any(shows(series.get((d, p), []), labels) for d, p, labels in FAULT_SHOWN[name]):
                    unseen.discard(name)
            return not empty and not unseen

        # What is still missing is the answer, reported by the tests below.
        with contextlib.suppress(TimeoutError):
            wait_until(every_panel_drawn, timeout_s=WAIT_S, interval_s=0.5, what="panel data")
    return empty | {f"the fault not shown: {name}" for name in unseen}


def test_every_panel_query_returns_data_under_a_payment_fault(empty_after_load: set[str]) -> None:
    assert sorted(empty_after_load) == [], f"no data after {WAIT_S}s of orders"


def _rule_names(stack: Stack) -> set[str]:
    return {
        rule["record"]
        for path in stack.config.rules_dir.glob("*_rules.yml")
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "record" in rule
    }


def _exposed(stack: Stack) -> set[str]:
    """Every metric name Prometheus holds from its targets (after relabelling), and every
    family a target declared even with no sample yet, by the names its samples take."""
    names = set(api(stack, "label/__name__/values"))
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
    for family, [metadata, *_] in api(stack, "metadata").items():
        names.update(family + suffix for suffix in suffixes.get(metadata["type"], ("",)))
    return names


def test_every_panel_names_only_metrics_a_process_exposes_or_a_rule_records(
    faulty: Stack, empty_after_load: set[str]
) -> None:
    known = _exposed(faulty) | _rule_names(faulty)
    unknown: dict[str, set[str]] = {}
    selectors = [
        (f"{board['uid']} / ${variable}", dashboards.expand(selector, dashboards.defaults(board)))
        for board in BOARDS.values()
        for variable, selector in dashboards.selectors(board)
    ]
    for where, promql in [(str(query), promql) for query, promql in QUERIES] + selectors:
        names: list[str] = []

        def selector_name(node: object, names: list[str] = names) -> None:
            if isinstance(node, promql_parser.VectorSelector):
                names.append(node.name or "")

        promql_parser.walk(promql_parser.parse(promql), selector_name)
        assert "" not in names, f"{where}: a selector without a metric name"
        if missing := set(names) - known:
            unknown[where] = missing
    assert unknown == {}
