"""What Locust (``make load``) costs while it drives the mesh: its process's RSS and CPU, and
the rate the mesh answered, on a real stack started as ``make up`` starts it.

Locust runs headless (``python -m load --headless``) at each level for ``--run-time``; its
process is sampled every 0.5 s (psutil: RSS, user + system CPU). The rates are Locust's own
CSV statistics: CreateOrder calls answered per second (new orders, duplicate retries and
declined customers' orders) and every call's. Both share the machine's cores with the mesh.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from meshctl.config import REPO_ROOT
from meshctl.testing import running_stack

#: (users, tasks per second of each user); of every 12 tasks 5 place a new order.
LEVELS = ((40, 4.0), (100, 4.0), (200, 4.0))
SAMPLE_S = 0.5
#: Stock no run sells out, and no per-customer limit trips (each user has 8 customers anyway).
ENV = {"INVENTORY_SEED_STOCK": "1000000"}
CREATE_ORDER = "/mesh.order.v1.OrderService/CreateOrder"


def _run(edge: str, users: int, pace: float, run_time_s: int, csv_dir: Path) -> dict[str, float]:
    command = [
        sys.executable,
        "-m",
        "load",
        "--headless",
        "--host",
        edge,
        "--users",
        str(users),
        "--spawn-rate",
        str(users),
        "--pace",
        str(pace),
        "--run-time",
        f"{run_time_s}s",
        "--csv-dir",
        str(csv_dir),
    ]
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    locust = psutil.Process(process.pid)
    rss: list[float] = []
    cpu = 0.0
    started = time.monotonic()
    while process.poll() is None:
        try:
            with locust.oneshot():
                rss.append(locust.memory_info().rss / 2**20)
                times = locust.cpu_times()
                cpu = times.user + times.system
        except psutil.NoSuchProcess:
            break
        time.sleep(SAMPLE_S)
    elapsed = time.monotonic() - started
    with (csv_dir / "locust_stats.csv").open(newline="") as f:
        rows = {row["Name"]: row for row in csv.DictReader(f)}
    orders = [row for name, row in rows.items() if name.startswith(CREATE_ORDER)]
    return {
        "rss_max": max(rss, default=0.0),
        "cpu_share": cpu / elapsed,
        "orders_per_s": sum(float(row["Requests/s"]) for row in orders),
        "calls_per_s": float(rows["Aggregated"]["Requests/s"]),
        "failures": float(rows["Aggregated"]["Failure Count"]),
        "p50": float(next(r for n, r in rows.items() if n == CREATE_ORDER)["50%"]),
        "p99": float(next(r for n, r in rows.items() if n == CREATE_ORDER)["99%"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench load", description=__doc__)
    parser.add_argument("--run-time", type=int, default=20, help="seconds per level")
    parser.add_argument("--quick", action="store_true", help="one level, 8 s")
    args = parser.parse_args()
    levels = LEVELS[:1] if args.quick else LEVELS
    run_time = 8 if args.quick else args.run_time
    print(
        f"Locust headless through the edge, {run_time} s per level; its process sampled every "
        f"{SAMPLE_S} s; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} (1, 5, 15 min)"
    )
    print(
        "| users | tasks/s per user | Locust RSS max MiB | Locust CPU (1.0 = a core) "
        "| CreateOrder answered /s | all calls /s | CreateOrder p50 ms | p99 ms | failures |"
    )
    print("|---|---|---|---|---|---|---|---|---|", flush=True)
    with (
        tempfile.TemporaryDirectory(prefix="bench-load-") as tmp,
        open(os.devnull, "w") as quiet,
        running_stack(Path(tmp) / "stack", ENV, out=quiet) as stack,
    ):
        for n, (users, pace) in enumerate(levels):
            got = _run(stack.config.edge_target, users, pace, run_time, Path(tmp) / str(n))
            print(
                f"| {users} | {pace:g} | {got['rss_max']:.1f} | {got['cpu_share']:.2f} "
                f"| {got['orders_per_s']:.1f} | {got['calls_per_s']:.1f} | {got['p50']:.0f} "
                f"| {got['p99']:.0f} | {got['failures']:.0f} |",
                flush=True,
            )
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
