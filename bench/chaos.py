"""``make chaos``: a fixed matrix of faults, each switched on and off mid-run, against the order
service's resilience policy and against a plain per-call deadline, in one run; writes a Markdown
report with PNG plots of what each did over time.

Two stacks run throughout, started as ``make up`` starts them (bench._fault_stacks): one with
services/order/order_service/resilience.yaml, one with PLAIN_DEADLINE_POLICY (one attempt per
call, no retry budget, breaker or bulkhead). Per scenario both are driven at once, each by a
grpc.aio client keeping ``in flight`` CreateOrder calls with fresh request_ids going through its
edge for ``before + during + after`` seconds, and the fault is switched live on both
(meshctl.faults): on at ``before``, off at ``before + during``, so each plot shows it start and
end. At once rather than in turns, because on 2 cores shared with other work the machine's
noise then lands on both policies at the same moments, and their lines can be compared second
by second; the price is that each stack's load takes CPU from the other (a policy that fails
fast sends more calls). Payment's faults are its servers' own
(``make fault AT=server``: the failed attempts reach payment and are counted there, and Envoy's
abort would answer before them), in force within meshkit.faults.CHECK_INTERVAL_S; inventory's
delay is Envoy's fault filter on the internal hop. The kill is a kill -9 of payment v1 at
``before``, which supervisord restarts; its window ends when Envoy sees the new process healthy.

Per second: CreateOrder calls answered by the second they ended in (goodput: CONFIRMED ones;
error rate: the others' share, refusals included), their p50/p99, and, from the services'
/metrics read on each second, the Charge attempts that reached payment
(``grpc_server_handled_total`` of both deployments) over the order service's Charge calls
(``resilience_client_calls_total``), and the order service's breaker state for Charge
(``resilience_client_breaker_state``) with the times it opened
(``resilience_client_breaker_transitions_total{outcome="open"}``).

Output, in ``--out`` (default var/chaos/<UTC time>/): report.md, one PNG per plot (each a panel
per scenario), <scenario>.csv (the per-second series of both policies) and summary.json (what
the report's tables say).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import datetime
import io
import json
import math
import os
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
from prometheus_client.parser import text_string_to_metric_families

from bench._fault_stacks import (
    BASE_ENV,
    CHARGE_METHOD,
    PLAIN_DEADLINE,
    PLAIN_DEADLINE_POLICY,
    POLICIES,
    RESILIENCE,
    ChargeCounts,
    create_order,
    kill_payment_v1,
    policy_stacks,
    status_name,
)
from bench._load import run_closed_loop
from mesh.order.v1 import order_pb2_grpc
from meshctl import faults
from meshctl.config import REPO_ROOT
from meshctl.stack import Stack
from meshctl.testing import scrape
from resilience import metric_names

#: Switches a scenario's fault on or off on one stack (blocking: run in a thread).
Switch = Callable[[Stack], None]
WARM_UP_S = 1.0
PHASES = ("before", "during", "after")
CONFIRMED = "CONFIRMED"


def _payment_fault(percent: int) -> Switch:
    def switch(stack: Stack) -> None:
        for target in faults.SERVER_TARGETS:
            faults.set_server_fault(
                stack.config.faults_dir, target, abort_percent=percent, code="UNAVAILABLE"
            )

    return switch


def _clear_payment(stack: Stack) -> None:
    faults.clear_server(stack.config.faults_dir)


def _slow_inventory(stack: Stack) -> None:
    faults.set_fault(stack.config.admin_url, "inventory", delay_ms=800)


def _clear_inventory(stack: Stack) -> None:
    faults.clear(stack.config.admin_url, "inventory")


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    #: The file names of its CSV, and the key of its panel.
    slug: str
    fault: str
    on: Switch | None = None
    off: Switch | None = None
    kill: bool = False


SCENARIOS = (
    Scenario("steady", "steady", "none"),
    Scenario(
        "payment 10% transient",
        "payment-10",
        "payment servers fail 10% of Charges with UNAVAILABLE",
        _payment_fault(10),
        _clear_payment,
    ),
    Scenario(
        "payment 50% sick",
        "payment-50",
        "payment servers fail 50% of Charges with UNAVAILABLE",
        _payment_fault(50),
        _clear_payment,
    ),
    Scenario(
        "payment down",
        "payment-down",
        "payment servers fail every Charge with UNAVAILABLE",
        _payment_fault(100),
        _clear_payment,
    ),
    Scenario(
        "inventory +800 ms",
        "inventory-slow",
        "Envoy delays every call to inventory by 800 ms",
        _slow_inventory,
        _clear_inventory,
    ),
    Scenario(
        "kill -9 payment v1", "kill", "kill -9 of payment v1, restarted by supervisord", kill=True
    ),
)
#: What --quick runs: the transient fault, where retries should show most plainly.
QUICK = ("payment-10",)


@dataclass(frozen=True, slots=True)
class Timing:
    before_s: float
    during_s: float
    after_s: float
    in_flight: int

    @property
    def total_s(self) -> float:
        return self.before_s + self.during_s + self.after_s


FULL = Timing(before_s=5, during_s=10, after_s=10, in_flight=8)
SHORT = Timing(before_s=2, during_s=6, after_s=3, in_flight=8)


@dataclass(slots=True)
class Sample:
    """One reading of the services' /metrics, at the end of its second of the run."""

    second: int
    reached: float
    calls: float
    breaker: float | None
    opened: float


@dataclass(slots=True)
class Run:
    """One policy's turn at one scenario."""

    policy: str
    #: (seconds into the run it ended, outcome: a status or an error code, latency s).
    calls: list[tuple[float, str, float]] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    #: When the fault was switched on and off (the kill: killed, and back), seconds in.
    window: tuple[float, float] = (0.0, 0.0)
    #: When each phase began, and the last ended: the fault's switches, not the timing's
    #: nominal seconds (a switch under load takes a while).
    edges: list[float] = field(default_factory=list)
    #: (attempts that reached payment, Charge calls) at each of those edges.
    boundaries: list[tuple[float, float]] = field(default_factory=list)


def _breaker(stack: Stack) -> tuple[float | None, float]:
    """The order service's breaker state for payment's Charge (None: the policy has none) and
    how often it has opened."""
    state: float | None = None
    opened = 0.0
    text = scrape(stack.config.ports["ORDER_METRICS_PORT"])
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if labels.get("target") != "payment" or labels.get("method") != CHARGE_METHOD:
                continue
            if sample.name == metric_names.BREAKER_STATE:
                state = sample.value
            elif (
                sample.name == metric_names.BREAKER_TRANSITIONS and labels.get("outcome") == "open"
            ):
                opened += sample.value
    return state, opened


class _Turn:
    """Drives one scenario on one stack: the load, the fault's switches, the readings."""

    def __init__(self, scenario: Scenario, policy: str, stack: Stack, timing: Timing) -> None:
        self.scenario = scenario
        self.stack = stack
        self.timing = timing
        self.run = Run(policy)
        self._lock = asyncio.Lock()
        self._counts: ChargeCounts | None = None
        self._t0 = 0.0
        self._run_id = uuid.uuid4().hex[:8]

    def _now(self) -> float:
        return time.monotonic() - self._t0

    async def _read(self) -> tuple[float, float]:
        assert self._counts is not None
        async with self._lock:
            return await asyncio.to_thread(self._counts.per_call)

    async def _sample_every_second(self, stop: asyncio.Event) -> None:
        """A reading at the end of each second, named by it; when the machine is so busy that
        a reading ends past the next second, the next is taken at once, less than a second
        late, and a second it has passed by gets none."""
        second = 1
        while True:
            wait = self._t0 + second - time.monotonic()
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), wait)
            if stop.is_set():
                return
            (reached, calls), (state, opened) = await asyncio.gather(
                self._read(), asyncio.to_thread(_breaker, self.stack)
            )
            if state is None and self.run.policy == RESILIENCE:
                state = 0.0  # the gauge appears at the first transition: closed until then
            self.run.samples.append(Sample(second, reached, calls, state, opened))
            second = max(second + 1, math.floor(self._now()))

    async def _edge(self) -> None:
        """A phase ends now: the time, and the Charge counts at it."""
        self.run.edges.append(self._now())
        self.run.boundaries.append(await self._read())

    async def _drive_fault(self) -> None:
        t, scenario = self.timing, self.scenario
        await asyncio.sleep(t.before_s)
        if scenario.kill:
            # The reading is also the killed process's last (ChargeCounts).
            await self._edge()
            await kill_payment_v1(self.stack, None)
            self.run.window = (self.run.edges[-1], self._now())
        else:
            if scenario.on is not None:
                await asyncio.to_thread(scenario.on, self.stack)
            await self._edge()
        await asyncio.sleep(max(0.0, t.before_s + t.during_s - self._now()))
        if scenario.off is not None:
            await asyncio.to_thread(scenario.off, self.stack)
        await self._edge()
        if scenario.off is not None:
            self.run.window = (self.run.edges[-2], self.run.edges[-1])

    async def _create(self, i: int) -> object:
        started = time.monotonic()
        try:
            order = await create_order(self._stub, f"chaos-{self._run_id}-{i}", i)
        except grpc.aio.AioRpcError as error:
            self.run.calls.append((self._now(), error.code().name, time.monotonic() - started))
            raise
        self.run.calls.append((self._now(), status_name(order), time.monotonic() - started))
        return order

    async def go(self, channel: grpc.aio.Channel) -> Run:
        self._stub = order_pb2_grpc.OrderServiceStub(channel)
        self._counts = await asyncio.to_thread(ChargeCounts, self.stack)
        self._t0 = time.monotonic()
        await self._edge()
        stop = asyncio.Event()
        sampler = asyncio.create_task(self._sample_every_second(stop))
        driver = asyncio.create_task(self._drive_fault())
        try:
            await run_closed_loop(
                self._create, in_flight=self.timing.in_flight, duration_s=self.timing.total_s
            )
            await driver
        finally:
            stop.set()
            await sampler
            driver.cancel()
        await self._edge()
        return self.run


async def _warm_up(stacks: Mapping[str, Stack]) -> None:
    """A second of load per stack, unmeasured: connections, caches and first calls' costs."""
    for stack in stacks.values():
        async with grpc.aio.insecure_channel(stack.config.edge_target) as channel:
            stub = order_pb2_grpc.OrderServiceStub(channel)
            run_id = uuid.uuid4().hex[:8]

            async def call(i: int, stub: Any = stub, run_id: str = run_id) -> object:
                return await create_order(stub, f"warm-{run_id}-{i}", i)

            await run_closed_loop(call, in_flight=4, duration_s=WARM_UP_S)


async def _matrix(
    scenarios: Sequence[Scenario], stacks: Mapping[str, Stack], timing: Timing
) -> dict[str, list[Run]]:
    await _warm_up(stacks)
    runs: dict[str, list[Run]] = {}
    for scenario in scenarios:
        async with contextlib.AsyncExitStack() as channels:
            turns = [
                _Turn(scenario, policy, stacks[policy], timing).go(
                    await channels.enter_async_context(
                        grpc.aio.insecure_channel(stacks[policy].config.edge_target)
                    )
                )
                for policy in POLICIES
            ]
            runs[scenario.slug] = list(await asyncio.gather(*turns))
        counts = ", ".join(f"{run.policy} {len(run.calls)}" for run in runs[scenario.slug])
        print(f"  {scenario.name}: calls {counts}", flush=True)
    return runs


# -- what the runs say -------------------------------------------------------------------------


def _percentile_ms(latencies: Sequence[float], q: float) -> float:
    if not latencies:
        return math.nan
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))] * 1000


def per_second(run: Run, total_s: float) -> list[dict[str, Any]]:
    """The run's series, a row per second: the calls that ended in it, and the readings taken
    at its end (deltas since the one before)."""
    rows = []
    previous: Sample | None = None
    samples = {s.second: s for s in run.samples}
    for second in range(math.ceil(total_s)):
        ended = [c for c in run.calls if second <= c[0] < second + 1]
        answered = len(ended)
        confirmed = sum(1 for _, outcome, _ in ended if outcome == CONFIRMED)
        latencies = [latency for _, _, latency in ended]
        sample = samples.get(second + 1)
        row: dict[str, Any] = {
            "second": second,
            "policy": run.policy,
            "answered": answered,
            "confirmed": confirmed,
            "failed": sum(1 for _, outcome, _ in ended if outcome == "FAILED"),
            "pending": sum(1 for _, outcome, _ in ended if outcome == "PENDING"),
            "refused_or_error": sum(
                1 for _, outcome, _ in ended if outcome not in (CONFIRMED, "FAILED", "PENDING")
            ),
            "error_rate": (answered - confirmed) / answered if answered else math.nan,
            "p50_ms": _percentile_ms(latencies, 0.5),
            "p99_ms": _percentile_ms(latencies, 0.99),
            "charge_calls": math.nan,
            "reached_payment": math.nan,
            "attempts_per_charge": math.nan,
            "breaker_state": math.nan,
            "breaker_opened": math.nan,
        }
        if sample is not None and previous is not None:
            calls = sample.calls - previous.calls
            reached = sample.reached - previous.reached
            row.update(
                charge_calls=calls,
                reached_payment=reached,
                attempts_per_charge=reached / calls if calls else math.nan,
                breaker_opened=sample.opened - previous.opened,
            )
        if sample is not None:
            previous = sample
        # A state lasts until the next reading (one may be late under load and miss a second).
        if previous is not None and previous.breaker is not None:
            row["breaker_state"] = previous.breaker
        rows.append(row)
    return rows


def phase_summary(run: Run) -> dict[str, dict[str, Any]]:
    """Per phase (and the whole run): the calls that ended in it and the attempts per Charge."""
    edges = [*run.edges[:-1], math.inf]
    summary = {}
    for n, phase in enumerate([*PHASES, "whole run"]):
        lo, hi = (edges[n], edges[n + 1]) if n < len(PHASES) else (0.0, math.inf)
        ended = [c for c in run.calls if lo <= c[0] < hi]
        outcomes = Counter(outcome for _, outcome, _ in ended)
        start, end = (n, n + 1) if n < len(PHASES) else (0, len(run.boundaries) - 1)
        reached = run.boundaries[end][0] - run.boundaries[start][0]
        calls = run.boundaries[end][1] - run.boundaries[start][1]
        latencies = [latency for _, _, latency in ended]
        summary[phase] = {
            "calls": len(ended),
            "outcomes": dict(sorted(outcomes.items())),
            "confirmed_share": outcomes[CONFIRMED] / len(ended) if ended else math.nan,
            "reached_payment": reached,
            "charge_calls": calls,
            "attempts_per_charge": reached / calls if calls else math.nan,
            "p50_ms": _percentile_ms(latencies, 0.5),
            "p99_ms": _percentile_ms(latencies, 0.99),
        }
    return summary


# -- the report --------------------------------------------------------------------------------

#: Each plot: its file, its title, the columns it draws (label, line style) and its y label.
PLOTS = (
    ("goodput.png", "Goodput: CreateOrder CONFIRMED per second", (("confirmed", "-"),), "orders/s"),
    ("error_rate.png", "Error rate: CreateOrder not CONFIRMED", (("error_rate", "-"),), "share"),
    (
        "attempts_per_charge.png",
        "Charge attempts that reached payment per Charge call",
        (("attempts_per_charge", "-"),),
        "attempts/call",
    ),
    (
        "latency.png",
        "CreateOrder latency, p50 (solid) and p99 (dashed)",
        (("p50_ms", "-"), ("p99_ms", "--")),
        "ms",
    ),
    (
        "breaker.png",
        "Order service's Charge breaker: 0 closed, 1 half-open, 2 open (x: opened that second;"
        " the plain deadline has none)",
        (("breaker_state", "-"),),
        "state",
    ),
)
COLOURS = {RESILIENCE: "tab:blue", PLAIN_DEADLINE: "tab:orange"}
DPI = 80
PALETTE = 64


def _plots(
    out: Path,
    scenarios: Sequence[Scenario],
    series: Mapping[str, list[dict[str, Any]]],
    windows: Mapping[str, list[tuple[float, float]]],
) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display here, and none needed
    import matplotlib.pyplot as plt
    from matplotlib import ticker
    from PIL import Image

    columns = min(3, len(scenarios))
    rows = math.ceil(len(scenarios) / columns)
    written = []
    for filename, title, lines, ylabel in PLOTS:
        figure, axes = plt.subplots(
            rows, columns, figsize=(4.2 * columns, 2.6 * rows + 0.6), squeeze=False, sharex=True
        )
        for n, scenario in enumerate(scenarios):
            ax = axes[n // columns][n % columns]
            lo = min(w[0] for w in windows[scenario.slug])
            hi = max(w[1] for w in windows[scenario.slug])
            if hi > lo:
                ax.axvspan(lo, hi, color="tab:red", alpha=0.12, lw=0)
            for policy in POLICIES:
                rows_of = [r for r in series[scenario.slug] if r["policy"] == policy]
                x = [r["second"] + 1 for r in rows_of]
                for column, style in lines:
                    ax.plot(
                        x,
                        [r[column] for r in rows_of],
                        style,
                        color=COLOURS[policy],
                        lw=1.4,
                        label=policy if style == "-" else None,
                    )
                if filename == "breaker.png":
                    opened = [(r["second"] + 1, 2.0) for r in rows_of if r["breaker_opened"] > 0]
                    if opened:
                        ax.plot(*zip(*opened, strict=True), "x", color=COLOURS[policy])
            ax.set_title(scenario.name, fontsize=9)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            if filename == "latency.png":
                ax.set_yscale("log")
                ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
                ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
                ax.yaxis.set_minor_formatter(ticker.NullFormatter())
            if filename == "breaker.png":
                ax.set_ylim(-0.2, 2.3)
            if filename == "error_rate.png":
                ax.set_ylim(-0.01, max(ax.get_ylim()[1], 0.1))  # none at all lies on the axis
            if n % columns == 0:
                ax.set_ylabel(ylabel, fontsize=8)
            if n // columns == rows - 1:
                ax.set_xlabel("s (fault shaded)", fontsize=8)
        for n in range(len(scenarios), rows * columns):
            axes[n // columns][n % columns].set_visible(False)
        axes[0][0].legend(fontsize=7, loc="best")
        figure.suptitle(title, fontsize=10, x=0.01, ha="left")
        figure.tight_layout(rect=(0, 0, 1, 0.95))
        drawn = io.BytesIO()
        figure.savefig(drawn, dpi=DPI, format="png")
        plt.close(figure)
        # A palette of 64 colours keeps the antialiased lines and is a third of the size of
        # the RGBA matplotlib writes: these files are committed (Pillow comes with matplotlib).
        Image.open(drawn).convert("RGB").quantize(colors=PALETTE).save(
            out / filename, optimize=True
        )
        written.append(filename)
    return written


def _cell(value: float, fmt: str) -> str:
    return "-" if isinstance(value, float) and math.isnan(value) else format(value, fmt)


def _report(
    out: Path,
    scenarios: Sequence[Scenario],
    summaries: Mapping[str, Mapping[str, Any]],
    images: Sequence[str],
    header: Sequence[str],
) -> str:
    lines = ["# Chaos report", "", *header, ""]
    lines += [
        "| scenario | policy | phase | calls | CONFIRMED | other outcomes | attempts per Charge "
        "| p50 ms | p99 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for scenario in scenarios:
        for policy in POLICIES:
            phases = summaries[scenario.slug]["policies"][policy]["phases"]
            for phase in ("before", "during", "after"):
                s = phases[phase]
                other = {k: v for k, v in s["outcomes"].items() if k != CONFIRMED}
                lines.append(
                    f"| {scenario.name} | {policy} | {phase} | {s['calls']} "
                    f"| {_cell(100 * s['confirmed_share'], '.1f')}% "
                    f"| {', '.join(f'{k} {v}' for k, v in other.items()) or '0'} "
                    f"| {_cell(s['attempts_per_charge'], '.2f')} "
                    f"({s['reached_payment']:.0f}/{s['charge_calls']:.0f}) "
                    f"| {_cell(s['p50_ms'], '.0f')} | {_cell(s['p99_ms'], '.0f')} |"
                )
    lines += [""]
    for scenario in scenarios:
        windows = summaries[scenario.slug]["windows"]
        spans = ", ".join(f"{p} {w[0]:.1f}-{w[1]:.1f} s" for p, w in windows.items() if w[1] > w[0])
        lines.append(
            f"- **{scenario.name}**: {scenario.fault}"
            + (f"; in force (shaded) {spans}." if spans else ".")
        )
    lines += [""]
    for image in images:
        lines += [f"![{image.removesuffix('.png')}]({image})", ""]
    text = "\n".join(lines)
    (out / "report.md").write_text(text)
    return text


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="the transient scenario, short phases")
    parser.add_argument("--out", type=Path, help="where to write (default var/chaos/<UTC time>/)")
    parser.add_argument(
        "--scenario", action="append", choices=[s.slug for s in SCENARIOS], help="only these"
    )
    args = parser.parse_args(argv)
    timing = SHORT if args.quick else FULL
    chosen = args.scenario or (QUICK if args.quick else [s.slug for s in SCENARIOS])
    scenarios = [s for s in SCENARIOS if s.slug in chosen]
    started_at = datetime.datetime.now(datetime.UTC)
    out = args.out or REPO_ROOT / "var" / "chaos" / started_at.strftime("%Y%m%dT%H%M%SZ")
    out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    started = time.monotonic()
    print(f"chaos: {len(scenarios)} scenario(s) x {len(POLICIES)} policies, writing {out}")
    with (
        tempfile.TemporaryDirectory(prefix="chaos-") as tmp,
        policy_stacks(Path(tmp), BASE_ENV) as stacks,
    ):
        runs = asyncio.run(_matrix(scenarios, stacks, timing))
    took = time.monotonic() - started
    load_after = os.getloadavg()

    series: dict[str, list[dict[str, Any]]] = {}
    summaries: dict[str, dict[str, Any]] = {}
    windows: dict[str, list[tuple[float, float]]] = {}
    for scenario in scenarios:
        rows = [row for run in runs[scenario.slug] for row in per_second(run, timing.total_s)]
        series[scenario.slug] = rows
        with (out / f"{scenario.slug}.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        windows[scenario.slug] = [run.window for run in runs[scenario.slug]]
        summaries[scenario.slug] = {
            "name": scenario.name,
            "fault": scenario.fault,
            "windows": {run.policy: run.window for run in runs[scenario.slug]},
            "policies": {
                run.policy: {"phases": phase_summary(run), "edges": run.edges}
                for run in runs[scenario.slug]
            },
        }
    images = _plots(out, scenarios, series, windows)
    command = "make chaos QUICK=1" if args.quick else "make chaos"
    header = [
        f"`{command}`, {started_at:%Y-%m-%d %H:%M} UTC, commit {_commit()}, {took:.0f} s; "
        f"load average {' '.join(f'{x:.1f}' for x in load_before)} before, "
        f"{' '.join(f'{x:.1f}' for x in load_after)} after (1, 5, 15 min; the machine's "
        "2 cores are shared, so absolute rates move from run to run).",
        "",
        f"Each scenario: {timing.before_s:g} s before the fault, {timing.during_s:g} s during, "
        f"{timing.after_s:g} s after, {timing.in_flight} CreateOrder calls in flight through the "
        f"edge, both policies at once. Stack settings: "
        f"{' '.join(f'{k}={v}' for k, v in sorted(BASE_ENV.items()))}. `{RESILIENCE}`: "
        "services/order/order_service/resilience.yaml; "
        f"`{PLAIN_DEADLINE}`: `{' '.join(PLAIN_DEADLINE_POLICY.split())}`.",
        "",
        "Phases are by when a call ended; attempts per Charge: Charge calls payment's servers "
        "handled over the order service's Charge calls in the phase (after a kill, the "
        "attempts the killed process was serving are not counted; the two counters are read "
        "a few ms apart, the calls in flight then fall on either side, so a phase's ratio is "
        "good to about ±0.03).",
    ]
    summary = {
        "started": started_at.isoformat(),
        "quick": args.quick,
        "timing": asdict(timing),
        "took_s": took,
        "scenarios": summaries,
        "plots": images,
    }
    (out / "summary.json").write_text(json.dumps(_without_nan(summary), indent=1))
    print(_report(out, scenarios, summaries, images, header))
    return out


def _without_nan(value: Any) -> Any:
    """``value`` with every NaN as None (null), which JSON has and NaN is not."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _without_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_without_nan(v) for v in value]
    return value


if __name__ == "__main__":
    main()
