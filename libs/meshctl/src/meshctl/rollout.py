"""``make rollout``: payment v2 delivered progressively without Kubernetes, as Flagger does it.

v2's weight steps up (ROLLOUT_STEPS, 10 -> 20 -> 30 -> 50 by default) and after each interval
(ROLLOUT_INTERVAL_S) one check reads Prometheus over that interval: v2's calls, the share of
them that succeeded, its p99, and v1's as the baseline. A check that passes moves to the next
step, or after the last one promotes v2 to 100%; a check that fails holds the weight, and
ROLLOUT_MAX_FAILED_CHECKS of them (counted over the whole run, as Flagger's threshold is) roll
v2 back to 0%. Too few calls to judge is a failed check: a canary nobody called proved nothing,
and rolling back is the safe default, so a rollout needs load (``make load``).

Where the numbers come from (Prometheus scrapes every 5 s, hence an interval of at least two
scrapes): success is Envoy's grpc_stats counts on the internal listener per cluster
(``envoy_cluster_grpc_{success,total}``), which include the calls Envoy's fault filter aborted
before they reached a server; p99 is each payment server's own handling time
(``grpc_server_handling_seconds``), which includes a server-side delay (``make fault AT=server``)
but not one Envoy's fault filter adds in front of the server.

Each decision is printed with its numbers and appended to ``<run dir>/rollout.jsonl``, one JSON
object a line shaped as a Grafana annotation (``time`` in ms, ``tags``, ``text``; POST it to
``/api/annotations``) with the numbers beside. A metric would need a scrape target that exists
only while a rollout runs, and its last decision could end before the next scrape; the
Canary dashboard's "Share of payment calls" already draws each step and the rollback from
Envoy's own counts.

The decisions (:class:`Rollout`, :func:`judge`) are pure: metrics, weights, sleep and the wall
clock are injected, so tests drive them with a fake metrics source and never sleep.
"""

from __future__ import annotations

import itertools
import json
import math
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Protocol

from meshctl.registry import CANARY, PAYMENT_SERVICE
from meshkit import settings

PRIMARY, CANARY_CLUSTER = (p.name for p in CANARY)
#: Prometheus scrapes every 5 s (meshctl.prometheus): a shorter window sees at most one sample.
MIN_INTERVAL_S = 10


def _rising(steps: tuple[int, ...]) -> bool:
    return (
        bool(steps)
        and all(1 <= step <= 100 for step in steps)
        and all(a < b for a, b in itertools.pairwise(steps))
    )


def _steps(raw: str) -> tuple[int, ...]:
    steps = tuple(int(part) for part in raw.replace(" ", "").split(","))
    if not _rising(steps):
        raise ValueError(raw)  # so that the message quotes the variable as it was written
    return steps


INTERVAL_S = settings.integer(
    "ROLLOUT_INTERVAL_S",
    MIN_INTERVAL_S,
    lo=MIN_INTERVAL_S,
    hi=3600,
    doc="`make rollout`: seconds between checks (INTERVAL=); each check reads this window",
)
STEPS = settings.Var(
    "ROLLOUT_STEPS",
    "10,20,30,50",
    "`make rollout`: v2's weights in turn (STEPS=); promotion to 100 follows the last",
    _steps,
    lambda steps: (
        bool(steps)
        and all(1 <= s <= 100 for s in steps)
        and all(a < b for a, b in itertools.pairwise(steps))
    ),
    "rising integer percents in 1..100, comma-separated",
)
MAX_FAILED_CHECKS = settings.integer(
    "ROLLOUT_MAX_FAILED_CHECKS", 2, lo=1, hi=100, doc="`make rollout`: failed checks that roll back"
)
MIN_REQUESTS = settings.integer(
    "ROLLOUT_MIN_REQUESTS",
    10,
    lo=1,
    hi=1_000_000,
    doc="`make rollout`: v2 calls a check needs in its window; fewer fails the check",
)
MIN_SUCCESS_PERCENT = settings.number(
    "ROLLOUT_MIN_SUCCESS_PERCENT",
    99.0,
    lo=0.0,
    hi=100.0,
    doc="`make rollout`: v2's calls that must end OK, percent",
)
MAX_SUCCESS_BELOW_V1 = settings.number(
    "ROLLOUT_MAX_SUCCESS_BELOW_V1",
    1.0,
    lo=0.0,
    hi=100.0,
    doc="`make rollout`: how many points v2's success may be below v1's",
)
MAX_P99_MS = settings.number(
    "ROLLOUT_MAX_P99_MS", 500.0, lo=1.0, hi=60_000.0, doc="`make rollout`: v2's p99 limit, in ms"
)
MAX_P99_ABOVE_V1_MS = settings.number(
    "ROLLOUT_MAX_P99_ABOVE_V1_MS",
    100.0,
    lo=0.0,
    hi=60_000.0,
    doc="`make rollout`: how much v2's p99 may exceed v1's, in ms",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Gates:
    """What a check requires of v2, alone and against v1 (an additive margin for p99, so two
    fast deployments a bucket apart do not fail on a ratio)."""

    min_requests: int = MIN_REQUESTS.field()
    min_success_percent: float = MIN_SUCCESS_PERCENT.field()
    max_success_below_v1: float = MAX_SUCCESS_BELOW_V1.field()
    max_p99_ms: float = MAX_P99_MS.field()
    max_p99_above_v1_ms: float = MAX_P99_ABOVE_V1_MS.field()

    def __post_init__(self) -> None:
        settings.check_fields(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    steps: tuple[int, ...] = STEPS.field()
    interval_s: int = INTERVAL_S.field()
    max_failed_checks: int = MAX_FAILED_CHECKS.field()
    gates: Gates = field(default_factory=Gates)

    def __post_init__(self) -> None:
        settings.check_fields(self)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Plan:
        """Every ROLLOUT_* variable; a bad one raises SettingsError naming it."""
        return settings.from_env(cls, env, gates=settings.from_env(Gates, env))


#: Every ROLLOUT_* variable, for the README's settings table.
VARIABLES = (*settings.variables(Plan), *settings.variables(Gates))


class Sample(NamedTuple):
    """One deployment's calls over a check's window; None: no data (no calls)."""

    requests: float
    success_percent: float | None
    p99_ms: float | None

    def __str__(self) -> str:
        success = "-" if self.success_percent is None else f"{self.success_percent:.2f}%"
        p99 = "-" if self.p99_ms is None else f"{self.p99_ms:.1f} ms"
        return f"{self.requests:.0f} calls, {success} ok, p99 {p99}"


class MetricsError(RuntimeError):
    """The metrics could not be read: the check fails, as a check without data does."""


class Metrics(Protocol):
    def sample(self, cluster: str, window_s: int) -> Sample:
        """One deployment's calls over the last ``window_s``; MetricsError when unreadable."""
        ...


def judge(canary: Sample, primary: Sample, gates: Gates) -> tuple[str, ...]:
    """Why the canary fails its check; empty when it passes. v1's numbers count only when v1
    had calls in the window."""
    if canary.requests < gates.min_requests or canary.success_percent is None:
        return (f"not enough data: {canary.requests:.0f} v2 calls < {gates.min_requests}",)
    reasons = []
    success = canary.success_percent
    if success < gates.min_success_percent:
        reasons.append(f"v2 success {success:.2f}% < {gates.min_success_percent:g}%")
    if primary.success_percent is not None:
        floor = primary.success_percent - gates.max_success_below_v1
        if success < floor:
            reasons.append(
                f"v2 success {success:.2f}% < v1's {primary.success_percent:.2f}% "
                f"- {gates.max_success_below_v1:g}"
            )
    if canary.p99_ms is not None:
        if canary.p99_ms > gates.max_p99_ms:
            reasons.append(f"v2 p99 {canary.p99_ms:.1f} ms > {gates.max_p99_ms:g} ms")
        if primary.p99_ms is not None:
            ceiling = primary.p99_ms + gates.max_p99_above_v1_ms
            if canary.p99_ms > ceiling:
                reasons.append(
                    f"v2 p99 {canary.p99_ms:.1f} ms > v1's {primary.p99_ms:.1f} ms "
                    f"+ {gates.max_p99_above_v1_ms:g}"
                )
    return tuple(reasons)


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """What the rollout did, and the numbers it did it on."""

    #: start, advance, hold, promote or rollback.
    action: str
    #: v2's weight afterwards (v1 has the rest of 100).
    weight: int
    time_s: float
    check: int = 0
    failed_checks: int = 0
    canary: Sample | None = None
    primary: Sample | None = None
    reasons: tuple[str, ...] = ()

    def text(self) -> str:
        head = f"{self.action:<8} v2 at {self.weight}%"
        if self.canary is None or self.primary is None:
            return head
        verdict = "passed" if not self.reasons else "FAILED (" + "; ".join(self.reasons) + ")"
        return (
            f"{head}  check {self.check}: {verdict}, failed checks {self.failed_checks}"
            f"  | v2: {self.canary}  | v1: {self.primary}"
        )

    def annotation(self) -> dict[str, object]:
        """A Grafana annotation (``POST /api/annotations``), with the numbers beside."""
        return {
            "time": int(self.time_s * 1000),
            "tags": ["rollout", CANARY_CLUSTER, self.action],
            "text": self.text(),
            "action": self.action,
            "weight": self.weight,
            "check": self.check,
            "failed_checks": self.failed_checks,
            "canary": None if self.canary is None else self.canary._asdict(),
            "primary": None if self.primary is None else self.primary._asdict(),
            "reasons": list(self.reasons),
        }


class Rollout:
    """One run of :class:`Plan` against ``metrics``, moving v2's weight with ``set_weight``."""

    def __init__(
        self,
        plan: Plan,
        metrics: Metrics,
        set_weight: Callable[[int], None],
        *,
        report: Callable[[Decision], None],
        sleep: Callable[[float], None] = time.sleep,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._plan = plan
        self._metrics = metrics
        self._set_weight = set_weight
        self._report = report
        self._sleep = sleep
        self._wall = wall

    def run(self) -> bool:
        """True: v2 promoted to 100%; False: rolled back to 0%."""
        plan = self._plan
        step, failed, checks = 0, 0, 0
        self._move("start", plan.steps[0])
        while True:
            self._sleep(plan.interval_s)
            checks += 1
            try:
                canary = self._metrics.sample(CANARY_CLUSTER, plan.interval_s)
                primary = self._metrics.sample(PRIMARY, plan.interval_s)
            except MetricsError as error:
                canary = primary = Sample(0, None, None)
                reasons: tuple[str, ...] = (f"metrics unavailable: {error}",)
            else:
                reasons = judge(canary, primary, plan.gates)
            failed += bool(reasons)
            last = step == len(plan.steps) - 1
            if reasons:
                action = "rollback" if failed >= plan.max_failed_checks else "hold"
                weight = 0 if action == "rollback" else plan.steps[step]
            else:
                action = "promote" if last else "advance"
                step += not last
                weight = 100 if last else plan.steps[step]
            self._move(action, weight, checks, failed, canary, primary, reasons)
            if action in ("promote", "rollback"):
                return action == "promote"

    def _move(
        self,
        action: str,
        weight: int,
        check: int = 0,
        failed: int = 0,
        canary: Sample | None = None,
        primary: Sample | None = None,
        reasons: tuple[str, ...] = (),
    ) -> None:
        if action != "hold":
            self._set_weight(weight)
        self._report(
            Decision(
                action=action,
                weight=weight,
                time_s=self._wall(),
                check=check,
                failed_checks=failed,
                canary=canary,
                primary=primary,
                reasons=reasons,
            )
        )


# -- the real metrics --------------------------------------------------------------------------


class PrometheusMetrics:
    """The stack's Prometheus (HTTP API), read per deployment over a check's window."""

    def __init__(self, url: str, *, timeout_s: float = 5.0) -> None:
        self._url = url
        self._timeout_s = timeout_s

    def query(self, expr: str) -> float | None:
        """An instant query's one value; None when it has none (or it is NaN: no calls)."""
        params = urllib.parse.urlencode({"query": expr})
        try:
            # Always http://127.0.0.1:<port> (StackConfig.prometheus_url).
            with urllib.request.urlopen(  # noqa: S310
                f"{self._url}/api/v1/query?{params}", timeout=self._timeout_s
            ) as response:
                body = json.load(response)
        except (OSError, ValueError) as error:
            raise MetricsError(f"Prometheus at {self._url}: {error}") from error
        if body.get("status") != "success":
            raise MetricsError(f"Prometheus refused {expr!r}: {body.get('error')}")
        result = body["data"]["result"]
        if not result:
            return None
        value = float(result[0]["value"][1])
        return None if math.isnan(value) else value

    def sample(self, cluster: str, window_s: int) -> Sample:
        envoy = f'envoy_cluster_name="{cluster}", grpc_service="{PAYMENT_SERVICE}"'
        window = f"[{window_s}s]"
        total = f"sum(increase(envoy_cluster_grpc_total{{{envoy}}}{window}))"
        success = f"sum(increase(envoy_cluster_grpc_success{{{envoy}}}{window}))"
        # The payment servers' job is named after their cluster (meshctl.prometheus).
        server = f'job="{cluster}", grpc_service="{PAYMENT_SERVICE}"'
        p99 = (
            "1000 * histogram_quantile(0.99, sum by (le) "
            f"(rate(grpc_server_handling_seconds_bucket{{{server}}}{window})))"
        )
        requests = self.query(total) or 0.0
        return Sample(
            requests=requests,
            success_percent=None if requests <= 0 else self.query(f"100 * {success} / {total}"),
            p99_ms=self.query(p99),
        )


class DecisionLog:
    """Each decision printed, and appended to a JSON-lines file of Grafana annotations."""

    def __init__(self, path: Path, say: Callable[[str], None]) -> None:
        self.path = path
        self._say = say

    def __call__(self, decision: Decision) -> None:
        self._say(decision.text())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as log:
            log.write(json.dumps(decision.annotation()) + "\n")
