"""The stack's own Prometheus, through its HTTP API: every program with metrics is scraped,
and the recording rules answer for orders sent through the edge."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.parse
import urllib.request
import uuid
from itertools import count
from typing import Any

import grpc
import pytest

from mesh.common.v1 import money_pb2
from mesh.order.v1 import order_pb2, order_pb2_grpc
from meshctl.config import REPO_ROOT
from meshctl.registry import ORDER, ORDER_SERVICE, PROGRAMS
from meshctl.stack import Stack
from meshkit.testing import wait_until

pytestmark = pytest.mark.stack

#: Scrapes and rule evaluations come every 5 s: a recorded rate needs two scrapes and one
#: evaluation after them, so data shows within ~15 s; twice that before calling it a failure.
WAIT_S = 30.0
CREATE_ORDER = f'grpc_service="{ORDER_SERVICE}", grpc_method="CreateOrder"'
README_PROMETHEUS = "127.0.0.1:9090"
#: The README's Metrics recipe: a curl to the query API, over a continuation line.
README_QUERY = re.compile(
    r"^curl -s 127\.0\.0\.1:9090/api/v1/query .*?'$", re.MULTILINE | re.DOTALL
)


def api(stack: Stack, path: str, **params: str) -> Any:
    url = f"{stack.config.prometheus_url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (http, built here)
        body = json.load(response)
    assert body["status"] == "success", body
    return body["data"]


def query(stack: Stack, promql: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = api(stack, "query", query=promql)["result"]
    return result


def test_every_program_with_metrics_is_scraped_and_up(stack: Stack) -> None:
    expected = {program.name: "up" for program in PROGRAMS if program.scrape is not None}
    seen: dict[str, str] = {}

    def all_up() -> bool:
        targets = api(stack, "targets", state="active")["activeTargets"]
        seen.clear()
        seen.update({target["labels"]["job"]: target["health"] for target in targets})
        return seen == expected

    try:
        wait_until(all_up, timeout_s=WAIT_S, interval_s=0.25, what="every target up")
    except TimeoutError:
        pytest.fail(f"targets after {WAIT_S}s: {seen}, wanted {expected}")


def test_orders_through_the_edge_reach_the_recording_rules(
    stack: Stack, edge: grpc.Channel
) -> None:
    orders = order_pb2_grpc.OrderServiceStub(edge)
    # Fifteen SKUs in turn, so no one SKU's stock runs out over a long wait.
    skus = (f"SKU-{10 + n % 15:04d}" for n in count())
    wanted = {
        # The services' own counters, per method.
        f"service_method:grpc_server_requests:rate5m{{{CREATE_ORDER}}} > 0",
        f"service_method:grpc_server_handling_seconds:p99_rate5m{{{CREATE_ORDER}}} > 0",
        # What CreateOrder's burn-rate alerts compare.
        f"service_method:slo_errors_per_call:ratio_rate5m{{{CREATE_ORDER}}} >= 0",
        # How the sagas ended, and what the outcome SLO's burn-rate alert compares.
        'outcome_reason:order_saga_outcomes:rate5m{outcome="CONFIRMED", reason="none"} > 0',
        f'job:order_saga_faults_per_order:ratio_rate5m{{job="{ORDER.name}"}} >= 0',
        # Envoy's counters, per cluster and (relabelled from grpc_stats) per method.
        f'cluster:envoy_cluster_upstream_rq:rate5m{{envoy_cluster_name="{ORDER.name}"}} > 0',
        f'envoy_cluster_grpc_total{{envoy_cluster_name="{ORDER.name}", {CREATE_ORDER}}} > 0',
    }
    missing = set(wanted)

    def ordered_and_recorded() -> bool:
        # One order per look, so the counters move between scrapes however the session began.
        order = orders.CreateOrder(
            order_pb2.CreateOrderRequest(
                customer_id="cust-prometheus",
                request_id=f"prometheus-{uuid.uuid4()}",
                lines=[money_pb2.Line(sku=next(skus), quantity=1)],
            ),
            timeout=10,
        )
        assert order.status == order_pb2.ORDER_STATUS_CONFIRMED, order.failure_reason
        missing.difference_update([promql for promql in missing if query(stack, promql)])
        return not missing

    try:
        wait_until(ordered_and_recorded, timeout_s=WAIT_S, interval_s=1.0, what="recorded data")
    except TimeoutError:
        pytest.fail(f"no data after {WAIT_S}s for {sorted(missing)}")
    failing = [
        (rule["name"], rule["lastError"])
        for group in api(stack, "rules")["groups"]
        for rule in group["rules"]
        if rule["health"] != "ok"
    ]
    assert failing == []


def test_the_readmes_query_recipe_answers_from_the_stack(stack: Stack) -> None:
    [recipe] = README_QUERY.findall((REPO_ROOT / "README.md").read_text())
    command = recipe.replace(README_PROMETHEUS, stack.config.prometheus_url.removeprefix("http://"))
    result = subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, check=True, timeout=30
    )
    answer = json.loads(result.stdout)
    assert answer["status"] == "success", answer
    for sample in answer["data"]["result"]:
        assert sample["metric"]["__name__"] == "service_method:grpc_server_requests:rate5m"
        assert sample["metric"]["grpc_method"] == "CreateOrder"
