"""Which server model for the services: sync grpcio (thread pool) or grpc.aio?

Two servers in their own processes answer the same unary call, each doing one Redis GET, as the
inventory cache does: sync grpcio with a thread pool and redis-py, and grpc.aio with
redis.asyncio. One grpc.aio client drives both at the same number of calls in flight, in
alternating blocks, and reads each server's CPU time from /proc, so the table shows throughput
and throughput per CPU-second of the server side.

    python -m bench server-model [--quick] [--in-flight 16] [--rounds 3] [--block 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
from pathlib import Path

import grpc

from bench._load import LoadResult, run_closed_loop
from meshkit.testing import free_port, redis_server, wait_until

METHOD = "/bench.v1.Model/Get"
KEY = b"bench:model:item"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
#: The sync server's thread pool decides its fate on 2 cores: every idle worker is woken for
#: work and fights for the GIL, so a large pool loses to grpc.aio and a small one wins.
SYNC_POOL_SIZES = (4, 8, 32)

_SYNC_SERVER = """
import sys
from concurrent import futures
import grpc, redis
port, redis_url, workers = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
client = redis.Redis.from_url(redis_url)
def get(request, context):
    return client.get(b"bench:model:item") or b""
handler = grpc.method_handlers_generic_handler(
    "bench.v1.Model", {"Get": grpc.unary_unary_rpc_method_handler(get)})
server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
server.add_generic_rpc_handlers((handler,))
server.add_insecure_port(f"127.0.0.1:{port}")
server.start()
server.wait_for_termination()
"""

_AIO_SERVER = """
import asyncio, sys
import grpc, redis.asyncio
port, redis_url = int(sys.argv[1]), sys.argv[2]
async def main():
    client = redis.asyncio.Redis.from_url(redis_url)
    async def get(request, context):
        return await client.get(b"bench:model:item") or b""
    handler = grpc.method_handlers_generic_handler(
        "bench.v1.Model", {"Get": grpc.unary_unary_rpc_method_handler(get)})
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()
asyncio.run(main())
"""


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def _ready(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            channel.unary_unary(METHOD)(b"", timeout=1)
        except grpc.RpcError:
            return False
    return True


async def _block(port: int, in_flight: int, duration_s: float) -> LoadResult:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(METHOD)
        return await run_closed_loop(
            lambda _: call(b"", timeout=5), in_flight=in_flight, duration_s=duration_s
        )


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench server-model", description=__doc__)
    parser.add_argument("--in-flight", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--block", type=float, default=2.0)
    parser.add_argument("--quick", action="store_true", help="1 round of 1 s blocks")
    args = parser.parse_args()
    rounds, block_s = (1, 1.0) if args.quick else (args.rounds, args.block)

    with redis_server() as redis_proc:
        redis_proc.client().set(KEY, b"x" * 200)
        servers: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
        try:
            variants = [
                (f"sync, {workers} threads", _SYNC_SERVER, str(workers))
                for workers in SYNC_POOL_SIZES
            ]
            variants.append(("grpc.aio", _AIO_SERVER, "0"))
            for name, source, workers_arg in variants:
                port = free_port()
                process = subprocess.Popen(
                    [sys.executable, "-c", source, str(port), redis_proc.url, workers_arg]
                )
                servers[name] = (process, port)
                wait_until(lambda port=port: _ready(port), timeout_s=20, what=name)
            results = {name: LoadResult() for name in servers}
            cpu = dict.fromkeys(servers, 0.0)
            for _ in range(rounds):
                for name, (process, port) in servers.items():
                    before = _cpu_s(process.pid)
                    results[name].merge(asyncio.run(_block(port, args.in_flight, block_s)))
                    cpu[name] += _cpu_s(process.pid) - before
        finally:
            for process, _ in servers.values():
                process.terminate()
                process.wait(10)

    print(
        f"one unary call + one Redis GET per call, {args.in_flight} in flight, "
        f"{rounds} alternating blocks of {block_s:.1f} s per server\n"
    )
    print(
        "| server           | calls/s | p50 ms | p99 ms | server CPU s | calls per CPU-s | vs aio |"
    )
    print(
        "|------------------|---------|--------|--------|--------------|-----------------|--------|"
    )
    aio = results["grpc.aio"]
    for name, result in results.items():
        per_cpu = result.ok / cpu[name] if cpu[name] else float("nan")
        print(
            f"| {name:<16} | {result.throughput:>7.0f} | {result.percentile_ms(0.5):>6.2f} | "
            f"{result.percentile_ms(0.99):>6.2f} | {cpu[name]:>12.2f} | {per_cpu:>15.0f} | "
            f"x{result.throughput / aio.throughput:>4.2f} |"
        )


if __name__ == "__main__":
    main()
