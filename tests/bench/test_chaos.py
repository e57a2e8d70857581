"""``make chaos QUICK=1`` on real stacks: the report, every plot and the data drawn in them,
and the resilience policy confirming more orders than a plain deadline while payment fails
10% of its Charges.

The short mode runs only the transient scenario (2 s before the fault, 6 s during, 3 s after,
per policy), the one where retries should show most plainly; the full matrix takes ~3 min.
"""

from __future__ import annotations

import csv
import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from meshctl.config import REPO_ROOT

pytestmark = pytest.mark.stack

RESILIENCE = "resilience.yaml"
PLAIN = "plain deadline"
TRANSIENT = "payment-10"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: Columns of the per-second series the plots draw.
SERIES = ("confirmed", "error_rate", "attempts_per_charge", "p50_ms", "p99_ms", "breaker_state")
GIVE_UP_S = 240


def _number(cell: str) -> float:
    return float(cell) if cell else math.nan


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("chaos")
    subprocess.run(
        [sys.executable, "-m", "bench.chaos", "--quick", "--out", str(out)],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
        timeout=GIVE_UP_S,
    )
    return out


def test_the_report_shows_every_plot_and_each_one_is_a_png(report: Path) -> None:
    summary = json.loads((report / "summary.json").read_text())
    text = (report / "report.md").read_text()
    assert set(summary["plots"]) == {
        "goodput.png",
        "error_rate.png",
        "attempts_per_charge.png",
        "latency.png",
        "breaker.png",
    }
    for image in summary["plots"]:
        assert f"]({image})" in text
        data = (report / image).read_bytes()
        assert data.startswith(PNG_MAGIC), image
        # IHDR, the first chunk: width and height, then a picture's worth of data.
        width, height = struct.unpack(">II", data[16:24])
        assert width >= 300, image
        assert height >= 200, image
        assert len(data) > 2_000, image


def test_the_plotted_series_hold_both_policies_every_second(report: Path) -> None:
    with (report / f"{TRANSIENT}.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    summary = json.loads((report / "summary.json").read_text())
    seconds = math.ceil(sum(summary["timing"][k] for k in ("before_s", "during_s", "after_s")))
    for policy in (RESILIENCE, PLAIN):
        mine = [row for row in rows if row["policy"] == policy]
        assert [int(row["second"]) for row in mine] == list(range(seconds))
        for column in SERIES:
            values = [_number(row[column]) for row in mine]
            if column == "breaker_state" and policy == PLAIN:
                # The plain deadline has no breaker: no state to draw.
                assert all(math.isnan(v) for v in values)
            else:
                assert any(not math.isnan(v) for v in values), (policy, column)
        assert sum(int(row["confirmed"]) for row in mine) > 0
    breaker = [_number(r["breaker_state"]) for r in rows if r["policy"] == RESILIENCE]
    assert {v for v in breaker if not math.isnan(v)} <= {0.0, 1.0, 2.0}
    # The fault starts after the first phase and ends before the last.
    for start, end in summary["scenarios"][TRANSIENT]["windows"].values():
        assert summary["timing"]["before_s"] <= start < end < seconds


def test_with_the_policy_on_a_transient_fault_fails_fewer_orders(report: Path) -> None:
    summary = json.loads((report / "summary.json").read_text())
    during = {
        policy: phases["phases"]["during"]
        for policy, phases in summary["scenarios"][TRANSIENT]["policies"].items()
    }
    on, off = during[RESILIENCE], during[PLAIN]
    assert off["outcomes"].get("FAILED", 0) > 0, off
    assert on["outcomes"].get("FAILED", 0) < off["outcomes"]["FAILED"]
    assert on["confirmed_share"] > off["confirmed_share"]
    # The retries are what did it: more attempts reached payment than Charge calls were made.
    assert on["reached_payment"] > on["charge_calls"]
    text = (report / "report.md").read_text()
    assert f"| payment 10% transient | {RESILIENCE} | during | {on['calls']} |" in text
    assert f"| payment 10% transient | {PLAIN} | during | {off['calls']} |" in text
