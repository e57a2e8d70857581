"""The inventory read cache against its failure modes: GetItem through the cache vs SQLite only.

Two inventory processes (``python -m inventory_service``, plaintext, each with its own SQLite file,
sharing one private redis-server) answer the same load, in alternating blocks: one with the cache
(``INVENTORY_CACHE=1``), one without (``INVENTORY_CACHE=0``: every read is one SQLite query).
SQLite loads of the cached one are read from its ``inventory_cache_loads_total``.

* hot key: GetItem of one SKU;
* hot key, writes: GetItem of SKU-0001..0004 while one more client reserves and releases SKU-0024
  (each write drops only that SKU's entry, so the read SKUs stay cached);
* unknown flood: GetItem of 200 SKUs that do not exist, cycled (NOT_FOUND is the answer);
* concurrent misses: rounds of 16 GetItem at once of one SKU whose entry was just deleted
  (as when it expires);
* Redis hung: the hot key with redis-server stopped by SIGSTOP (the cached process skips Redis
  after one 50 ms timeout);
* Zipf: a catalog of ZIPF_SKUS SKUs (ZIPF_UNKNOWN more that do not exist), popularity Zipf with
  s = ZIPF_S over all of them in a seeded random rank order; ZIPF_LIST_SHARE of the calls are
  ListItems (first page), ZIPF_WRITE_SHARE a Reserve and its Release of a Zipf-drawn SKU (each
  drops that SKU's entry), the rest GetItem. Next to it, the same mix with uniform popularity.
  Both processes get the same seeded sequence of calls; hit ratio and negative hits are read
  from ``inventory_cache_lookups_total`` (a ListItems counts its page and each of its items),
  latency is of the reads only.

    python -m bench cache [--in-flight 8] [--rounds 3] [--block 2] [--miss-rounds 200] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import random
import signal
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import redis
from prometheus_client.parser import text_string_to_metric_families

from bench._load import LoadResult, run_closed_loop
from inventory_service import metric_names
from inventory_service.cache import CACHE_NAMESPACE, item_keys
from inventory_service.config import DB_FILENAME
from inventory_service.domain import CATALOG, CatalogEntry
from inventory_service.store import SCHEMA, InventoryStore
from mesh.common.v1 import money_pb2
from mesh.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from meshkit.ids import new_id
from meshkit.sqlite import Database
from meshkit.testing import RedisServer, free_port, is_serving, redis_server, wait_until

UNKNOWN_SKUS = [f"NOPE-{i:04d}" for i in range(200)]
MISS_SKU = "SKU-0003"
CONCURRENT_MISSES = 16

#: The Zipf scenario's catalog: the seed's SKUs plus bench ones, and SKUs that do not exist.
#: Many more than one TTL's reads here (~700/s x 30 s), so that popularity decides what is hot.
ZIPF_SKUS = 20_000
ZIPF_UNKNOWN = 2_000
ZIPF_S = 1.1
ZIPF_LIST_SHARE = 0.05
ZIPF_WRITE_SHARE = 0.02
ZIPF_SEED = 20261202
#: Calls drawn in advance (the sequence repeats past it; a 2 s block makes ~2000-5000 here).
ZIPF_DRAWS = 100_000
BENCH_SKUS = [
    CatalogEntry(f"ZIPF-{n:04d}", f"Bench item {n}", 100 + n)
    for n in range(ZIPF_SKUS - len(CATALOG))
]


@dataclass
class Inventory:
    name: str
    port: int
    metrics_port: int
    process: subprocess.Popen[bytes]
    cached: bool

    def counter(self, name: str, **labels: str) -> float:
        """A counter's total over the series matching ``labels``."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics") as response:
            text = response.read().decode()
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and labels.items() <= sample.labels.items()
        )

    def loads(self) -> float:
        """SQLite loads the cache made so far (the uncached process: every read is one)."""
        return self.counter(metric_names.LOADS)

    def lookups(self) -> dict[str, float]:
        """Cache lookups so far by result (every kind)."""
        results = (
            metric_names.RESULT_HIT,
            metric_names.RESULT_NEGATIVE_HIT,
            metric_names.RESULT_STALE,
            metric_names.RESULT_MISS,
            metric_names.RESULT_BYPASS,
        )
        return {r: self.counter(metric_names.LOOKUPS, result=r) for r in results}

    def skipped(self) -> tuple[float, float]:
        """Lookups that skipped Redis, and Redis errors, so far."""
        bypassed = self.counter(metric_names.LOOKUPS, result=metric_names.RESULT_BYPASS)
        return bypassed, self.counter(metric_names.REDIS_ERRORS)


@contextlib.contextmanager
def _inventory(name: str, redis_url: str, data_dir: Path, *, cached: bool) -> Iterator[Inventory]:
    port, metrics_port = free_port(), free_port()
    env = {
        **os.environ,
        "MESH_MTLS": "0",
        "INVENTORY_PORT": str(port),
        "INVENTORY_METRICS_PORT": str(metrics_port),
        "INVENTORY_MAX_WORKERS": "32",
        "INVENTORY_SEED_STOCK": "1000000",
        "INVENTORY_CACHE": "1" if cached else "0",
        "DATA_DIR": str(data_dir),
        "REDIS_URL": redis_url,
    }
    data_dir.mkdir(parents=True)
    db = Database(data_dir / DB_FILENAME, SCHEMA)  # the Zipf scenario's larger catalog
    InventoryStore(db).seed(tuple(BENCH_SKUS), 1_000_000)
    db.close()
    process = subprocess.Popen(
        [sys.executable, "-m", "inventory_service"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: is_serving(f"127.0.0.1:{port}"), timeout_s=30, what=name)
        yield Inventory(name, port, metrics_port, process, cached)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


Make = Callable[[inventory_pb2_grpc.InventoryServiceStub], Callable[[int], Awaitable[object]]]


def _get(skus: list[str]) -> Make:
    def make(stub: inventory_pb2_grpc.InventoryServiceStub) -> Callable[[int], Awaitable[object]]:
        async def call(i: int) -> object:
            try:
                return await stub.GetItem(
                    inventory_pb2.GetItemRequest(sku=skus[i % len(skus)]), timeout=5
                )
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.NOT_FOUND:  # an unknown SKU's answer
                    raise
                return error

        return call

    return make


async def _writer(stub: inventory_pb2_grpc.InventoryServiceStub, stop: asyncio.Event) -> int:
    writes = 0
    while not stop.is_set():
        reservation = await stub.Reserve(
            inventory_pb2.ReserveRequest(
                order_id=new_id("ord"), lines=[money_pb2.Line(sku="SKU-0024", quantity=1)]
            ),
            timeout=5,
        )
        await stub.Release(
            inventory_pb2.ReleaseRequest(reservation_id=reservation.reservation_id), timeout=5
        )
        writes += 2
    return writes


@dataclass
class Row:
    scenario: str
    variant: str
    result: LoadResult
    loads: float
    writes: int = 0
    bypassed: float = 0.0  # lookups that skipped Redis (breaker open, or a failed call)
    redis_errors: float = 0.0

    @property
    def loads_per_1000(self) -> float:
        return 1000 * self.loads / self.result.ok if self.result.ok else float("nan")


async def _block(
    inventory: Inventory,
    stub: inventory_pb2_grpc.InventoryServiceStub,
    make: Make,
    *,
    in_flight: int,
    block_s: float,
    with_writes: bool = False,
) -> tuple[LoadResult, float, int]:
    before = inventory.loads()
    stop = asyncio.Event()
    writer = asyncio.create_task(_writer(stub, stop)) if with_writes else None
    result = await run_closed_loop(make(stub), in_flight=in_flight, duration_s=block_s)
    stop.set()
    writes = await writer if writer is not None else 0
    loads = inventory.loads() - before if inventory.cached else float(result.ok)
    return result, loads, writes


async def _misses(
    inventory: Inventory,
    stub: inventory_pb2_grpc.InventoryServiceStub,
    admin: redis.Redis,
    rounds: int,
) -> tuple[LoadResult, float]:
    result = LoadResult()
    before = inventory.loads()
    entry, _ = item_keys(MISS_SKU)
    request = inventory_pb2.GetItemRequest(sku=MISS_SKU)
    loop = asyncio.get_running_loop()
    for _ in range(rounds):
        admin.delete(entry)
        started = loop.time()
        await asyncio.gather(*(stub.GetItem(request, timeout=5) for _ in range(CONCURRENT_MISSES)))
        elapsed = loop.time() - started
        result.latencies_s.extend([elapsed] * CONCURRENT_MISSES)
        result.elapsed_s += elapsed
    loads = inventory.loads() - before if inventory.cached else float(result.ok)
    return result, loads


def zipf_draws(n: int, s: float, count: int, rng: random.Random) -> list[int]:
    """``count`` ranks in [0, n) with P(k) proportional to (k + 1) ** -s: inverse CDF over the
    cumulative weights (random.choices bisects them). numpy is not a dependency for one line."""
    cumulative = list(itertools.accumulate((k + 1) ** -s for k in range(n)))
    return rng.choices(range(n), cum_weights=cumulative, k=count)


@dataclass(frozen=True)
class Mix:
    """A seeded sequence of calls: the i-th call is ``kinds[i]`` of ``skus[i]``."""

    name: str
    skus: list[str]
    kinds: list[str]  # "get", "list" or "write"

    @classmethod
    def of(cls, name: str, *, zipf: bool) -> Mix:
        rng = random.Random(ZIPF_SEED)
        population = [e.sku for e in (*CATALOG, *BENCH_SKUS)]
        population += [f"GONE-{n:04d}" for n in range(ZIPF_UNKNOWN)]
        rng.shuffle(population)  # rank order: unknown SKUs land anywhere in it
        n = len(population)
        ranks = (
            zipf_draws(n, ZIPF_S, ZIPF_DRAWS, rng)
            if zipf
            else [rng.randrange(n) for _ in range(ZIPF_DRAWS)]
        )
        kinds = rng.choices(
            ["get", "list", "write"],
            weights=[1 - ZIPF_LIST_SHARE - ZIPF_WRITE_SHARE, ZIPF_LIST_SHARE, ZIPF_WRITE_SHARE],
            k=ZIPF_DRAWS,
        )
        skus = [population[r] for r in ranks]
        # A write goes to a SKU that exists: the next known one in the draw order.
        known = [sku for sku in skus if not sku.startswith("GONE-")]
        skus = [
            known[i % len(known)] if kind == "write" and sku.startswith("GONE-") else sku
            for i, (sku, kind) in enumerate(zip(skus, kinds, strict=True))
        ]
        return cls(name, skus, kinds)


@dataclass
class MixRow:
    popularity: str
    variant: str
    reads: LoadResult
    loads: float = 0.0
    writes: int = 0
    lookups: dict[str, float] | None = None  # by result; None: no cache

    def per_1000(self, value: float) -> float:
        return 1000 * value / self.reads.ok if self.reads.ok else float("nan")


async def _mix_block(
    inventory: Inventory,
    stub: inventory_pb2_grpc.InventoryServiceStub,
    mix: Mix,
    *,
    start: int,
    in_flight: int,
    block_s: float,
) -> tuple[LoadResult, float, int, dict[str, float], int]:
    """One block of the mix from its ``start``-th call: read latencies only (writes are timed
    apart), SQLite loads, writes, the cache's lookups by result, and where the next block
    starts (each block goes on with the sequence: a replay would find it cached)."""
    reads: list[float] = []
    writes = 0
    last = start
    loop = asyncio.get_running_loop()

    async def call(i: int) -> object:
        nonlocal writes, last
        last = max(last, start + i)
        sku, kind = mix.skus[(start + i) % ZIPF_DRAWS], mix.kinds[(start + i) % ZIPF_DRAWS]
        if kind == "write":
            lines = [money_pb2.Line(sku=sku, quantity=1)]
            reservation = await stub.Reserve(
                inventory_pb2.ReserveRequest(order_id=new_id("ord"), lines=lines), timeout=5
            )
            await stub.Release(
                inventory_pb2.ReleaseRequest(reservation_id=reservation.reservation_id), timeout=5
            )
            writes += 2
            return reservation
        started = loop.time()
        try:
            if kind == "list":
                reply: object = await stub.ListItems(inventory_pb2.ListItemsRequest(), timeout=5)
            else:
                reply = await stub.GetItem(inventory_pb2.GetItemRequest(sku=sku), timeout=5)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                raise
            reply = error
        reads.append(loop.time() - started)
        return reply

    lookups_before = inventory.lookups() if inventory.cached else {}
    loads_before = inventory.loads()
    result = await run_closed_loop(call, in_flight=in_flight, duration_s=block_s)
    read_result = LoadResult(latencies_s=reads, errors=result.errors, elapsed_s=result.elapsed_s)
    loads = inventory.loads() - loads_before if inventory.cached else float(len(reads))
    lookups = (
        {r: v - lookups_before[r] for r, v in inventory.lookups().items()}
        if inventory.cached
        else {}
    )
    return read_result, loads, writes, lookups, last + 1


async def _mixes(
    args: argparse.Namespace,
    pair: list[Inventory],
    stubs: list[inventory_pb2_grpc.InventoryServiceStub],
    admin: redis.Redis,
) -> list[MixRow]:
    rows: dict[tuple[str, str], MixRow] = {}
    for mix in (Mix.of(f"Zipf s={ZIPF_S}", zipf=True), Mix.of("uniform", zipf=False)):
        # Each popularity starts from an empty cache, warmed by one block of its own.
        for key in admin.scan_iter(match=f"{CACHE_NAMESPACE}*", count=1000):
            admin.delete(key)
        # Each variant walks the same sequence of calls from its start, at its own pace.
        cursor = {inventory.name: 0 for inventory in pair}
        for inventory, stub in zip(pair, stubs, strict=True):  # warm-up, not counted
            *_, cursor[inventory.name] = await _mix_block(
                inventory, stub, mix, start=0, in_flight=args.in_flight, block_s=args.block
            )
        for _ in range(args.rounds):
            for inventory, stub in zip(pair, stubs, strict=True):
                reads, loads, writes, lookups, cursor[inventory.name] = await _mix_block(
                    inventory,
                    stub,
                    mix,
                    start=cursor[inventory.name],
                    in_flight=args.in_flight,
                    block_s=args.block,
                )
                row = rows.setdefault(
                    (mix.name, inventory.name),
                    MixRow(mix.name, inventory.name, LoadResult(), 0.0, 0, {} if lookups else None),
                )
                row.reads.merge(reads)
                row.loads += loads
                row.writes += writes
                if row.lookups is not None:
                    for result, count in lookups.items():
                        row.lookups[result] = row.lookups.get(result, 0.0) + count
    return list(rows.values())


async def _run(args: argparse.Namespace, redis_proc: RedisServer, pair: list[Inventory]) -> None:
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{i.port}") for i in pair]
    stubs = [inventory_pb2_grpc.InventoryServiceStub(c) for c in channels]
    admin = redis_proc.client()
    rows: dict[tuple[str, str], Row] = {}

    skipped_before = (0.0, 0.0)

    def start(inventory: Inventory) -> None:
        nonlocal skipped_before
        skipped_before = inventory.skipped() if inventory.cached else (0.0, 0.0)

    def add(scenario: str, inventory: Inventory, result: LoadResult, loads: float, w: int) -> None:
        row = rows.setdefault(
            (scenario, inventory.name), Row(scenario, inventory.name, LoadResult(), 0.0)
        )
        row.result.merge(result)
        row.loads += loads
        row.writes += w
        if inventory.cached:
            bypassed, errors = inventory.skipped()
            row.bypassed += bypassed - skipped_before[0]
            row.redis_errors += errors - skipped_before[1]

    scenarios: list[tuple[str, Make, bool]] = [
        ("hot key", _get(["SKU-0001"]), False),
        ("hot key, writes", _get(["SKU-0001", "SKU-0002", "SKU-0003", "SKU-0004"]), True),
        ("unknown flood", _get(UNKNOWN_SKUS), False),
    ]
    for stub in stubs:  # warm-up: connections, scripts
        await run_closed_loop(_get(["SKU-0001"])(stub), in_flight=2, duration_s=0.3)
    for name, make, with_writes in scenarios:
        for _ in range(args.rounds):
            for inventory, stub in zip(pair, stubs, strict=True):
                start(inventory)
                result, loads, writes = await _block(
                    inventory,
                    stub,
                    make,
                    in_flight=args.in_flight,
                    block_s=args.block,
                    with_writes=with_writes,
                )
                add(name, inventory, result, loads, writes)
    for _ in range(args.rounds):
        for inventory, stub in zip(pair, stubs, strict=True):
            start(inventory)
            result, loads = await _misses(inventory, stub, admin, args.miss_rounds // args.rounds)
            add(f"{CONCURRENT_MISSES} concurrent misses", inventory, result, loads, 0)
    redis_proc.process.send_signal(signal.SIGSTOP)
    try:
        for inventory, stub in zip(pair, stubs, strict=True):
            start(inventory)
            result, loads, _ = await _block(
                inventory, stub, _get(["SKU-0001"]), in_flight=args.in_flight, block_s=args.block
            )
            add("hot key, Redis hung", inventory, result, loads, 0)
    finally:
        redis_proc.process.send_signal(signal.SIGCONT)
    mixes = await _mixes(args, pair, stubs, admin)
    admin.close()
    for channel in channels:
        await channel.close()
    _print(list(rows.values()))
    _print_mixes(mixes)


def _print(rows: list[Row]) -> None:
    print(
        "| scenario | variant | GetItem/s | SQLite loads per 1000 reads | p50 ms | p99 ms"
        " | max ms | errors | Redis skipped / errors |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        r = row.result
        throughput = f"{r.throughput:.0f}" if "misses" not in row.scenario else "—"
        skipped = f"{row.bypassed:.0f} / {row.redis_errors:.0f}"
        print(
            f"| {row.scenario} | {row.variant} | {throughput} | {row.loads_per_1000:.1f}"
            f" | {r.percentile_ms(0.5):.2f} | {r.percentile_ms(0.99):.2f}"
            f" | {max(r.latencies_s, default=0) * 1000:.1f} | {r.error_count}"
            f" | {skipped if row.variant == 'cache on' else ''} |"
        )
    print(
        f"\n(concurrent misses: latency is one round of {CONCURRENT_MISSES} calls at once;"
        " writes per block in 'hot key, writes': "
        + ", ".join(f"{row.variant} {row.writes}" for row in rows if row.writes)
        + ")"
    )


def _print_mixes(rows: list[MixRow]) -> None:
    print(
        f"\n{ZIPF_SKUS} SKUs + {ZIPF_UNKNOWN} unknown, {ZIPF_DRAWS} seeded draws; calls:"
        f" {ZIPF_LIST_SHARE:.0%} ListItems, {ZIPF_WRITE_SHARE:.0%} Reserve + Release,"
        " the rest GetItem\n"
    )
    print(
        "| popularity | variant | reads/s | hit ratio | negative hits per 1000 reads"
        " | SQLite loads per 1000 reads | p50 ms | p99 ms | writes | errors |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        r = row.reads
        if row.lookups:
            total = sum(row.lookups.values())
            served = sum(
                row.lookups[k]
                for k in (
                    metric_names.RESULT_HIT,
                    metric_names.RESULT_NEGATIVE_HIT,
                    metric_names.RESULT_STALE,
                )
            )
            ratio = f"{served / total:.3f}" if total else "—"
            negative = f"{row.per_1000(row.lookups[metric_names.RESULT_NEGATIVE_HIT]):.1f}"
        else:
            ratio = negative = "—"
        print(
            f"| {row.popularity} | {row.variant} | {r.throughput:.0f} | {ratio} | {negative}"
            f" | {row.per_1000(row.loads):.1f} | {r.percentile_ms(0.5):.2f}"
            f" | {r.percentile_ms(0.99):.2f} | {row.writes} | {r.error_count} |"
        )
    print(
        "\n(hit ratio: lookups answered from Redis, fresh, negative or stale, over every lookup;"
        " a ListItems is one read and looks up its page and each item)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench cache", description=__doc__.split("\n")[0])
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--block", type=float, default=2.0)
    parser.add_argument("--miss-rounds", type=int, default=210)
    parser.add_argument("--quick", action="store_true", help="1 round, 1 s blocks, 30 misses")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.block, args.miss_rounds = 1, 1.0, 30
    with (
        tempfile.TemporaryDirectory(prefix="bench-cache-") as tmp,
        redis_server() as redis_proc,
        _inventory("cache on", redis_proc.url, Path(tmp) / "on", cached=True) as on,
        _inventory("cache off", redis_proc.url, Path(tmp) / "off", cached=False) as off,
    ):
        asyncio.run(_run(args, redis_proc, [off, on]))


if __name__ == "__main__":
    main()
