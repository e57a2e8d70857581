"""meshctl.rollout's decisions with a scripted metrics source and a recorded sleep: when it
advances, holds, promotes and rolls back, and the numbers each decision carries (the real
Prometheus and Envoy run in tests/stack/test_rollout.py)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from meshctl.cli import main
from meshctl.rollout import (
    Decision,
    DecisionLog,
    Gates,
    MetricsError,
    Plan,
    Rollout,
    Sample,
    judge,
)
from meshkit.settings import SettingsError

HEALTHY = Sample(requests=50, success_percent=100.0, p99_ms=5.0)
BASELINE = Sample(requests=450, success_percent=100.0, p99_ms=5.0)
ABORTING = Sample(requests=50, success_percent=80.0, p99_ms=5.0)
IDLE = Sample(requests=0, success_percent=None, p99_ms=None)


class Scripted:
    """v2's samples in turn, v1 always at the baseline; records what was asked."""

    def __init__(self, canary: Iterable[Sample]) -> None:
        self._canary: Iterator[Sample] = iter(canary)
        self.asked: list[tuple[str, int]] = []

    def sample(self, cluster: str, window_s: int) -> Sample:
        self.asked.append((cluster, window_s))
        return next(self._canary) if cluster == "payment_v2" else BASELINE


def run(
    plan: Plan, canary: Iterable[Sample]
) -> tuple[bool, list[int], list[Decision], list[float]]:
    weights: list[int] = []
    decisions: list[Decision] = []
    slept: list[float] = []
    metrics = Scripted(canary)
    promoted = Rollout(
        plan, metrics, weights.append, report=decisions.append, sleep=slept.append, wall=lambda: 7.0
    ).run()
    assert metrics.asked == [
        (c, plan.interval_s) for _ in slept for c in ("payment_v2", "payment_v1")
    ]
    return promoted, weights, decisions, slept


def test_a_healthy_canary_steps_up_every_interval_and_is_promoted() -> None:
    promoted, weights, decisions, slept = run(Plan(interval_s=15), [HEALTHY] * 4)

    assert promoted
    assert weights == [10, 20, 30, 50, 100]
    assert [d.action for d in decisions] == ["start", "advance", "advance", "advance", "promote"]
    assert slept == [15, 15, 15, 15]
    last = decisions[-1]
    assert (last.check, last.failed_checks, last.canary, last.primary) == (4, 0, HEALTHY, BASELINE)


def test_failing_checks_hold_the_weight_and_the_threshold_rolls_back() -> None:
    promoted, weights, decisions, _ = run(Plan(max_failed_checks=2), [HEALTHY, ABORTING, ABORTING])

    assert not promoted
    # A hold leaves the weight as it is; the rollback puts all traffic back on v1.
    assert weights == [10, 20, 0]
    assert [(d.action, d.weight, d.failed_checks) for d in decisions] == [
        ("start", 10, 0),
        ("advance", 20, 0),
        ("hold", 20, 1),
        ("rollback", 0, 2),
    ]
    assert decisions[-1].reasons == (
        "v2 success 80.00% < 99%",
        "v2 success 80.00% < v1's 100.00% - 1",
    )


def test_failed_checks_count_over_the_whole_run_as_flaggers_threshold_does() -> None:
    plan = Plan(steps=(10, 50), max_failed_checks=2)
    promoted, weights, _, _ = run(plan, [ABORTING, HEALTHY, ABORTING])
    assert not promoted
    assert weights == [10, 50, 0]


def test_a_canary_nobody_calls_fails_its_checks_for_want_of_data() -> None:
    promoted, weights, decisions, _ = run(Plan(max_failed_checks=1), [IDLE])
    assert not promoted
    assert weights == [10, 0]
    assert decisions[-1].reasons == ("not enough data: 0 v2 calls < 10",)


class Unreachable:
    def sample(self, cluster: str, window_s: int) -> Sample:
        raise MetricsError("connection refused")


def test_metrics_that_cannot_be_read_fail_the_check_and_end_in_a_rollback() -> None:
    weights: list[int] = []
    decisions: list[Decision] = []
    plan = Plan(max_failed_checks=2)
    rollout = Rollout(
        plan, Unreachable(), weights.append, report=decisions.append, sleep=lambda _: None
    )
    assert not rollout.run()
    assert weights == [10, 0]
    assert decisions[-1].reasons == ("metrics unavailable: connection refused",)


def test_the_gates_alone_and_against_v1() -> None:
    gates = Gates(min_requests=10, max_p99_ms=500, max_p99_above_v1_ms=100)
    assert judge(HEALTHY, BASELINE, gates) == ()
    assert judge(HEALTHY._replace(requests=9), BASELINE, gates) == (
        "not enough data: 9 v2 calls < 10",
    )
    assert judge(HEALTHY._replace(p99_ms=600), BASELINE, gates) == (
        "v2 p99 600.0 ms > 500 ms",
        "v2 p99 600.0 ms > v1's 5.0 ms + 100",
    )
    assert judge(HEALTHY._replace(p99_ms=150), BASELINE, gates) == (
        "v2 p99 150.0 ms > v1's 5.0 ms + 100",
    )
    # Both slow alike: only the absolute limit speaks.
    assert judge(HEALTHY._replace(p99_ms=450), BASELINE._replace(p99_ms=400), gates) == ()
    # v1 failing as much (a shared dependency down) still fails v2's absolute gate.
    sick_v1 = BASELINE._replace(success_percent=80.0)
    assert judge(ABORTING, sick_v1, gates) == ("v2 success 80.00% < 99%",)
    # Without v1 calls in the window there is nothing to compare with.
    assert judge(HEALTHY, IDLE, gates) == ()


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"ROLLOUT_STEPS": "50,20"}, "ROLLOUT_STEPS"),
        ({"ROLLOUT_STEPS": "10,abc"}, "ROLLOUT_STEPS"),
        ({"ROLLOUT_STEPS": "0,50"}, "ROLLOUT_STEPS"),
        ({"ROLLOUT_INTERVAL_S": "5"}, "ROLLOUT_INTERVAL_S"),
        ({"ROLLOUT_MAX_FAILED_CHECKS": "0"}, "ROLLOUT_MAX_FAILED_CHECKS"),
        ({"ROLLOUT_MIN_SUCCESS_PERCENT": "101"}, "ROLLOUT_MIN_SUCCESS_PERCENT"),
    ],
)
def test_a_bad_setting_names_its_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        Plan.from_env(env)


def test_settings_reach_the_plan() -> None:
    plan = Plan.from_env(
        {"ROLLOUT_STEPS": "20, 50", "ROLLOUT_INTERVAL_S": "12", "ROLLOUT_MIN_REQUESTS": "3"}
    )
    assert (plan.steps, plan.interval_s, plan.gates.min_requests) == ((20, 50), 12, 3)


def test_make_rollout_refuses_a_bad_setting_in_one_line_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {"MESH_VAR_DIR": str(tmp_path), "ROLLOUT_STEPS": "50,20"}
    assert main(["rollout"], env) == 2
    err = capsys.readouterr().err
    assert err.startswith("meshctl: ROLLOUT_STEPS=")
    assert err.count("\n") == 1


def test_each_decision_is_printed_and_appended_as_a_grafana_annotation(tmp_path: Path) -> None:
    said: list[str] = []
    log = DecisionLog(tmp_path / "run" / "rollout.jsonl", said.append)
    _, _, decisions, _ = run(Plan(steps=(50,), max_failed_checks=1), [ABORTING])
    for decision in decisions:
        log(decision)

    lines = [json.loads(line) for line in log.path.read_text().splitlines()]
    assert [line["tags"] for line in lines] == [
        ["rollout", "payment_v2", "start"],
        ["rollout", "payment_v2", "rollback"],
    ]
    rollback = lines[-1]
    assert rollback["time"] == 7000
    assert rollback["canary"] == {"requests": 50, "success_percent": 80.0, "p99_ms": 5.0}
    assert rollback["text"] == said[-1]
    assert said[-1].startswith("rollback v2 at 0%  check 1: FAILED (v2 success 80.00% < 99%")
    assert "| v2: 50 calls, 80.00% ok, p99 5.0 ms  | v1: 450 calls, 100.00% ok" in said[-1]
