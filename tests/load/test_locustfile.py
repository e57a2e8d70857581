"""``make load HEADLESS=1`` against a real mesh: Locust's shoppers run for a few seconds through
the edge, and its CSV statistics name every call the tasks make, none failed."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from meshctl.config import REPO_ROOT
from meshctl.testing import running_stack

pytestmark = pytest.mark.stack

ORDERS = "/mesh.order.v1.OrderService"
INVENTORY = "/mesh.inventory.v1.InventoryService"
#: What each task calls, as load/locustfile.py names it (imported there, Locust would patch
#: this process for gevent).
NAMES = (
    f"{INVENTORY}/ListItems",
    f"{INVENTORY}/GetItem",
    f"{ORDERS}/CreateOrder",
    f"{ORDERS}/CreateOrder (same request_id again)",
    f"{ORDERS}/CreateOrder (declined customer)",
    f"{ORDERS}/GetOrder",
    f"{ORDERS}/ListOrders",
)

#: Enough for every task to have run at 10 users x 4 tasks/s (480 tasks over 12 kinds).
RUN_TIME = "12s"
#: Locust ends a headless run itself; this only bounds a hung one.
GIVE_UP_S = 90


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_every_task_reports_its_calls_and_none_fails_on_a_healthy_mesh(tmp_path: Path) -> None:
    # Stock no run sells out: a sold-out catalog fails orders (and the statistics) by design.
    with running_stack(tmp_path / "stack", {"INVENTORY_SEED_STOCK": "100000"}) as stack:
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "load",
                "--headless",
                "--host",
                stack.config.edge_target,
                "--users",
                "10",
                "--spawn-rate",
                "10",
                "--pace",
                "4",
                "--run-time",
                RUN_TIME,
                "--csv-dir",
                str(tmp_path / "csv"),
            ],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=GIVE_UP_S,
            check=False,
        )
    failures = _rows(tmp_path / "csv" / "locust_failures.csv")
    assert failures == [], failures
    assert run.returncode == 0, run.stderr[-2000:]
    stats = {row["Name"]: row for row in _rows(tmp_path / "csv" / "locust_stats.csv")}
    counts = {name: int(stats[name]["Request Count"]) for name in NAMES if name in stats}
    assert set(counts) == set(NAMES), f"missing from the stats: {set(NAMES) - set(counts)}"
    assert all(count > 0 for count in counts.values()), counts
    assert {name: int(stats[name]["Failure Count"]) for name in NAMES} == dict.fromkeys(NAMES, 0)
    # Locust's own total row sums the calls above.
    assert int(stats["Aggregated"]["Request Count"]) == sum(counts.values())
