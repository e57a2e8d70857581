"""The order events stream end to end: an event written (XADD) to its notification stored.

A notification process (``python -m notification_service``, plaintext, its own SQLite file and
a private redis-server) consumes ``{mesh:orders}:events``. Each event carries ``occurred_at_ms``
taken just before its XADD, and its row the ``stored_at_ms`` of its commit, so the latency is read
from the rows (1 ms resolution) and polling the table costs the consumers nothing.

* paced: one event every ``--interval-ms`` (the consumers wait in XREADGROUP BLOCK), the
  latency an order's customer sees;
* burst: ``--burst`` events written at once (pipelined), with 1, 2 and 4 consumers: the queueing
  latency and how fast a backlog drains (events / (last stored - first written)).

Every event is stored exactly once (checked), and the process's RSS is read at the end. CPU per
event is the notification process's user + system time (``/proc/<pid>/stat``) over a run, divided
by its events: the consumers' work, plus what the idle server and /metrics cost meanwhile.

    python -m bench notifications [--paced 300] [--interval-ms 10] [--burst 2000] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import redis

from meshkit import order_events
from meshkit.ids import new_id
from meshkit.order_events import OrderEvent
from meshkit.testing import free_port, is_serving, redis_server, wait_until
from notification_service.config import DB_FILE
from notification_service.servicer import SERVICE_NAME


@dataclass
class Notifier:
    process: subprocess.Popen[bytes]
    db: Path

    def rows(self) -> list[tuple[int, int]]:
        """(occurred_at_ms, stored_at_ms) of every notification stored."""
        if not self.db.exists():
            return []
        with closing(sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)) as conn:
            return conn.execute("SELECT occurred_at_ms, stored_at_ms FROM notifications").fetchall()

    def cpu_s(self) -> float:
        """User + system CPU seconds the process has used so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0


@contextlib.contextmanager
def notifier(redis_url: str, data_dir: Path, consumers: int) -> Iterator[Notifier]:
    port = free_port()
    env = {
        **os.environ,
        "MESH_MTLS": "0",
        "DATA_DIR": str(data_dir),
        "REDIS_URL": redis_url,
        "NOTIFICATION_PORT": str(port),
        "NOTIFICATION_METRICS_PORT": str(free_port()),
        "NOTIFICATION_CONSUMERS": str(consumers),
        "NOTIFICATION_CONSUMER_PREFIX": f"bench-{consumers}",
        "MESH_LOG_LEVEL": "WARNING",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "notification_service"], env=env, stderr=subprocess.DEVNULL
    )
    try:
        target = f"127.0.0.1:{port}"
        wait_until(lambda: is_serving(target, SERVICE_NAME), timeout_s=30, what="notification")
        yield Notifier(process, data_dir / DB_FILE)
    finally:
        process.terminate()
        process.wait(timeout=15)


def event() -> dict[str, str]:
    order_id = new_id("ord")
    status = order_events.STATUS_CONFIRMED
    return OrderEvent(
        event_id=order_events.event_id(order_id, status),
        type=order_events.ORDER_CONFIRMED,
        order_id=order_id,
        customer_id="bench",
        status=status,
        total_units=1999,
        total_currency="USD",
        occurred_at_ms=time.time_ns() // 1_000_000,
    ).to_fields()


def wait_for(notifications: Notifier, count: int) -> list[tuple[int, int]]:
    wait_until(lambda: len(notifications.rows()) >= count, timeout_s=120, what=f"{count} rows")
    rows = notifications.rows()
    assert len(rows) == count, f"{len(rows)} notifications for {count} events"
    return rows


def percentile(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


def row(name: str, rows: list[tuple[int, int]], consumers: int, cpu_s: float) -> str:
    latencies = [stored - occurred for occurred, stored in rows]
    span_s = max(1, max(s for _, s in rows) - min(o for o, _ in rows)) / 1000
    p50, p99 = statistics.median(latencies), percentile(latencies, 0.99)
    return (
        f"| {name:<8} | {consumers:>9} | {len(rows):>6} | {p50:>6.0f} | {p99:>6.0f} "
        f"| {max(latencies):>6} | {len(rows) / span_s:>8.0f} | {cpu_s * 1e6 / len(rows):>10.0f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench notifications")
    parser.add_argument("--paced", type=int, default=300, help="events written one by one")
    parser.add_argument("--interval-ms", type=float, default=10.0, help="between paced events")
    parser.add_argument("--burst", type=int, default=2000, help="events written at once")
    parser.add_argument("--quick", action="store_true", help="100 paced, a burst of 500")
    args = parser.parse_args()
    if args.quick:
        args.paced, args.burst = 100, 500

    print(
        "| run      | consumers | events | p50 ms | p99 ms | max ms | events/s | CPU us/evt |\n"
        "|----------|-----------|--------|--------|--------|--------|----------|------------|"
    )
    rss: dict[int, float] = {}
    with redis_server() as server:
        client: redis.Redis = server.client()
        for consumers in (1, 2, 4):
            client.flushall()
            with (
                tempfile.TemporaryDirectory(prefix="bench-notify-") as tmp,
                notifier(server.url, Path(tmp), consumers) as notifications,
            ):
                if consumers == 2:  # the default: the latency one customer sees
                    cpu = notifications.cpu_s()
                    for _ in range(args.paced):
                        client.xadd(order_events.STREAM, event())  # type: ignore[arg-type]
                        time.sleep(args.interval_ms / 1000)
                    paced = wait_for(notifications, args.paced)
                    cpu = notifications.cpu_s() - cpu
                    print(row("paced", paced, consumers, cpu), flush=True)
                before = len(notifications.rows())
                cpu = notifications.cpu_s()
                pipe = client.pipeline(transaction=False)
                for _ in range(args.burst):
                    pipe.xadd(order_events.STREAM, event())  # type: ignore[arg-type]
                pipe.execute()
                rows = wait_for(notifications, before + args.burst)
                cpu = notifications.cpu_s() - cpu
                burst = sorted(rows, key=lambda r: r[0])[before:]
                print(row("burst", burst, consumers, cpu), flush=True)
                rss[consumers] = notifications.rss_mib()
        client.close()
    print(
        "\nnotification RSS after the run: "
        + ", ".join(f"{c} consumers {mib:.1f} MiB" for c, mib in rss.items())
    )
    print(f"(paced every {args.interval_ms} ms; default NOTIFICATION_BATCH/BLOCK_MS; 1 ms clock)")
