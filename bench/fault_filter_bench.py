"""What live faults cost the calls they leave alone.

* Envoy: ``InventoryService/GetItem`` (a Redis cache hit behind it) through the internal
  listener of a stack's Envoy, whose fault filter holds settings for every route, all at 0%
  (the default), against the same call through a second Envoy on the same backends, started
  from the same rendered config without the fault filter; interleaved blocks, one client, mTLS
  as the order workload. Then the same call with inventory's abort at 100%: Envoy's own answer,
  which no backend sees.
* The payment server: what a Charge pays to learn its faults (``LiveFaults.current()``: a clock
  read, and a look at the fault file once every 0.5 s), in-process.

    python -m bench fault-filter [--rounds N] [--calls N] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import yaml

from bench import _interleave
from mesh.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from meshctl import envoy, faults
from meshctl.envoy import EnvoyAdmin
from meshctl.stack import Stack
from meshctl.testing import running_stack
from meshkit.faults import FaultFile
from meshkit.testing import free_ports, wait_until
from meshkit.tls import WorkloadTls
from payment_service.domain import FaultPolicy
from payment_service.faults import ChargeFaults, LiveFaults

SKU = "SKU-0001"
IN_PROCESS_CALLS = 200_000


def _without_fault_filter(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            key: _without_fault_filter(value) for key, value in node.items() if key != faults.FILTER
        }
    if isinstance(node, list):
        return [
            _without_fault_filter(item)
            for item in node
            if not (isinstance(item, dict) and item.get("name") == faults.FILTER)
        ]
    return node


@contextlib.contextmanager
def second_envoy(stack: Stack, directory: Path) -> Iterator[str]:
    """An Envoy of the stack's rendered config minus the fault filter, on ports of its own;
    yields its internal listener's address."""
    config = _without_fault_filter(yaml.safe_load(stack.config.envoy_conf.read_text()))
    internal, edge, admin = free_ports(3)
    for listener in config["static_resources"]["listeners"]:
        port = internal if listener["name"] == "internal" else edge
        listener["address"]["socket_address"]["port_value"] = port
        for chain in listener["filter_chains"]:
            for log in chain["filters"][0]["typed_config"].get("access_log", ()):
                log["typed_config"]["path"] = str(directory / "access.log")
    config["admin"]["address"]["socket_address"]["port_value"] = admin
    assert faults.FILTER not in str(config)
    path = directory / "envoy.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    process = subprocess.Popen(
        [envoy.binary(), "-c", str(path), "--disable-hot-restart", "--log-level", "error"],
        stdout=subprocess.DEVNULL,
    )
    try:
        plain = EnvoyAdmin(f"http://127.0.0.1:{admin}")

        def ready() -> bool:
            try:
                health = plain.cluster_health()
            except OSError:
                return False
            return bool(health) and all(flags == "healthy" for flags in health.values())

        wait_until(ready, timeout_s=30, what="the second Envoy's clusters healthy")
        yield f"127.0.0.1:{internal}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def _get_item(channel: grpc.Channel) -> Any:
    stub = inventory_pb2_grpc.InventoryServiceStub(channel)
    request = inventory_pb2.GetItemRequest(sku=SKU)

    def call() -> None:
        stub.GetItem(request, timeout=5)

    return call


def _aborted(channel: grpc.Channel) -> Any:
    stub = inventory_pb2_grpc.InventoryServiceStub(channel)
    request = inventory_pb2.GetItemRequest(sku=SKU)

    def call() -> None:
        try:
            stub.GetItem(request, timeout=5)
        except grpc.RpcError as error:
            if error.code() is not grpc.StatusCode.UNAVAILABLE:
                raise
        else:
            raise AssertionError("the abort is not in force")

    return call


def _print_rows(seen: dict[str, list[float]], baseline: str) -> None:
    base, _ = _interleave.median_and_p99_us(seen[baseline])
    print(f"{'variant':<34} {'calls':>7} {'p50 us':>8} {'p99 us':>8} {'p50 vs base':>12}")
    for name, took in seen.items():
        median, p99 = _interleave.median_and_p99_us(took)
        print(f"{name:<34} {len(took):>7} {median:>8.0f} {p99:>8.0f} {median - base:>+11.0f}")


def _in_process(tmp: Path) -> None:
    policy = FaultPolicy()
    live = LiveFaults(
        ChargeFaults(policy, grpc.StatusCode.UNAVAILABLE, "start-up"),
        FaultFile(tmp / "payment_v1.json"),
        random=lambda: 0.5,
    )
    for name, call in (
        ("a clock read (baseline)", time.monotonic),
        ("LiveFaults.current()", live.current),
    ):
        start = time.perf_counter()
        for _ in range(IN_PROCESS_CALLS):
            call()
        took = (time.perf_counter() - start) / IN_PROCESS_CALLS
        print(f"{name:<34} {took * 1e9:>8.0f} ns per call")


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench fault-filter", description=__doc__)
    _interleave.add_arguments(parser)
    args = _interleave.parse(parser)
    with (
        tempfile.TemporaryDirectory(prefix="mesh-bench-faults-") as tmp,
        running_stack(Path(tmp) / "stack", out=io.StringIO()) as stack,
        second_envoy(stack, Path(tmp)) as plain_target,
    ):
        identity = WorkloadTls.load(stack.config.certs_dir, "order")
        with (
            grpc.secure_channel(
                stack.config.internal_target, identity.channel_credentials()
            ) as with_filter,
            grpc.secure_channel(plain_target, identity.channel_credentials()) as without,
        ):
            print(
                f"GetItem through Envoy's internal listener, {args.rounds} interleaved rounds of "
                f"{args.calls} calls per variant, one client:"
            )
            seen, _ = _interleave.interleaved(
                {
                    "no fault filter (baseline)": _get_item(without),
                    "fault filter, every fault at 0%": _get_item(with_filter),
                },
                rounds=args.rounds,
                calls=args.calls,
            )
            faults.set_fault(stack.config.admin_url, "inventory", abort_percent=100)
            wait_until(lambda: _fails(with_filter), timeout_s=10, what="inventory's abort in force")
            aborted, _ = _interleave.interleaved(
                {"abort 100% (Envoy answers)": _aborted(with_filter)},
                rounds=args.rounds,
                calls=args.calls,
            )
            faults.clear(stack.config.admin_url)
            _print_rows({**seen, **aborted}, "no fault filter (baseline)")
        print("\nThe payment server's look at its faults, per Charge, in-process:")
        _in_process(Path(tmp))


def _fails(channel: grpc.Channel) -> bool:
    try:
        _get_item(channel)()
    except grpc.RpcError:
        return True
    return False


if __name__ == "__main__":
    main()
