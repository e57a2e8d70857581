"""Faults switched live, per upstream, with no restart: ``make fault`` and its Python API.

Two layers, each per target (inventory, payment_v1, payment_v2):

- **envoy** (the default): Envoy's fault filter on the internal listener, where the order
  service's calls go, as Istio injects faults. The filter itself does nothing; every internal
  route carries per-route settings for the cluster it sends to (:func:`with_per_cluster_faults`,
  applied by meshctl.render), each with runtime keys of its own (:func:`runtime_keys`), so
  ``fault.payment_v2.abort.abort_percent=20`` aborts a fifth of the calls routed to v2 and none
  of v1's. The weighted split picks its cluster when the route is resolved, before the filter
  runs, and each weighted cluster carries its own settings; the ``x-canary: always`` route
  carries v2's. The keys are set through the admin endpoint (``/runtime_modify``) and read back
  from ``/runtime``. An aborted call is Envoy's local reply: it never reaches the router, so the
  route's retry of connect failures cannot resend it, and the backend never sees it.
- **server**: the payment servers' own knobs (meshkit.faults: a JSON file each re-reads), for
  faults that must happen inside a server, such as slowness that holds its threads.

Python API (what tests and the chaos tooling call)::

    set_fault(admin_url, "inventory", delay_ms=800, delay_percent=50)
    set_fault(admin_url, "payment_v2", abort_percent=20, code="UNAVAILABLE")
    active(admin_url)   # {"inventory": Fault(...), "payment_v2": Fault(...)}
    clear(admin_url)    # or clear(admin_url, "inventory")

and ``set_server_fault(faults_dir, ...)``, ``active_server``, ``clear_server`` for the servers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TextIO

import grpc

from meshctl.envoy import EnvoyAdmin
from meshctl.registry import CANARY, INVENTORY, PAYMENT_V1, PAYMENT_V2
from meshkit.faults import (
    CODES,
    MAX_DELAY_MS,
    Fault,
    FaultError,
    fault_path,
    parse_code,
    read_fault,
    write_fault,
)

__all__ = [
    "FILTER",
    "LAYERS",
    "SERVER_TARGETS",
    "TARGETS",
    "Fault",
    "FaultError",
    "active",
    "active_server",
    "clear",
    "clear_server",
    "runtime_keys",
    "set_fault",
    "set_server_fault",
    "with_per_cluster_faults",
]

#: What a fault can be put on: the clusters the order service calls through Envoy.
TARGETS = tuple(p.name for p in (INVENTORY, PAYMENT_V1, PAYMENT_V2))
#: The servers that have fault knobs of their own.
SERVER_TARGETS = tuple(p.name for p in CANARY)
LAYERS = ("envoy", "server")
FILTER = "envoy.filters.http.fault"
_HTTP_FAULT = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
_CODES_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


class RuntimeKeys(NamedTuple):
    """One target's runtime keys, named as Envoy's defaults are (``fault.http.abort...``)."""

    abort_percent: str
    grpc_status: str
    delay_percent: str
    delay_ms: str


def runtime_keys(target: str) -> RuntimeKeys:
    return RuntimeKeys(
        f"fault.{target}.abort.abort_percent",
        f"fault.{target}.abort.grpc_status",
        f"fault.{target}.delay.fixed_delay_percent",
        f"fault.{target}.delay.fixed_duration_ms",
    )


def _check_target(target: str, targets: Sequence[str] = TARGETS) -> None:
    if target not in targets:
        raise FaultError(f"TARGET={target!r}: must be one of {', '.join(targets)}")


# -- Envoy's config ----------------------------------------------------------------------------


def route_settings(target: str) -> dict[str, Any]:
    """The fault filter's per-route settings for calls routed to ``target``: off (0%) until its
    runtime keys say otherwise. The configured delay is never used: the delay's percentage is
    0 until ``set_fault`` sets its duration key too."""
    keys = runtime_keys(target)
    off = {"numerator": 0, "denominator": "HUNDRED"}
    return {
        "@type": _HTTP_FAULT,
        # A gRPC abort: a trailers-only answer (HTTP 200) carrying this grpc-status.
        "abort": {"grpc_status": Fault().code.value[0], "percentage": off},
        "delay": {"fixed_delay": "1s", "percentage": off},
        "abort_percent_runtime": keys.abort_percent,
        "abort_grpc_status_runtime": keys.grpc_status,
        "delay_percent_runtime": keys.delay_percent,
        "delay_duration_runtime": keys.delay_ms,
    }


def with_per_cluster_faults(config: dict[str, Any]) -> dict[str, Any]:
    """Gives every route of a listener that runs the fault filter, and every weighted cluster
    of such a route, the settings of the target it sends to (in place; returns ``config``)."""
    for listener in config["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for network_filter in chain["filters"]:
                manager = network_filter.get("typed_config", {})
                if not any(f.get("name") == FILTER for f in manager.get("http_filters", ())):
                    continue
                for host in manager["route_config"]["virtual_hosts"]:
                    for route in host["routes"]:
                        _route_faults(route)
    return config


def _route_faults(route: dict[str, Any]) -> None:
    action = route.get("route")
    if not isinstance(action, dict):
        return
    if action.get("cluster") in TARGETS:
        route.setdefault("typed_per_filter_config", {})[FILTER] = route_settings(action["cluster"])
    for weighted in action.get("weighted_clusters", {}).get("clusters", ()):
        if weighted["name"] in TARGETS:
            per_filter = weighted.setdefault("typed_per_filter_config", {})
            per_filter[FILTER] = route_settings(weighted["name"])


# -- Envoy's runtime ---------------------------------------------------------------------------


def _merged(
    current: Fault | None,
    *,
    abort_percent: int | None,
    code: str | grpc.StatusCode | None,
    delay_ms: int | None,
    delay_percent: int | None,
) -> Fault:
    """``current`` with what was given changed; a delay given without a percent hits every
    call."""
    fault = current or Fault()
    changes: dict[str, Any] = {}
    if abort_percent is not None:
        changes["abort_percent"] = abort_percent
    if code is not None:
        changes["code"] = code if isinstance(code, grpc.StatusCode) else parse_code(code)
    if delay_ms is not None:
        changes["delay_ms"] = delay_ms
        changes["delay_percent"] = 100 if delay_percent is None else delay_percent
    elif delay_percent is not None:
        changes["delay_percent"] = delay_percent
    return dataclasses.replace(fault, **changes)


def set_fault(
    admin_url: str,
    target: str,
    *,
    abort_percent: int | None = None,
    code: str | grpc.StatusCode | None = None,
    delay_ms: int | None = None,
    delay_percent: int | None = None,
) -> Fault:
    """Puts a fault on the calls Envoy routes to ``target``, live: what is given changes, the
    rest of the target's fault stays. Returns the fault now in force there."""
    _check_target(target)
    admin = EnvoyAdmin(admin_url)
    fault = _merged(
        active(admin_url).get(target),
        abort_percent=abort_percent,
        code=code,
        delay_ms=delay_ms,
        delay_percent=delay_percent,
    )
    admin.set_runtime(_runtime_values(target, fault))
    return fault


def _runtime_values(target: str, fault: Fault) -> dict[str, str]:
    """Every key of ``target``; the empty value removes a key from the admin layer, so what is
    off reads back as absent, not as 0."""
    keys = runtime_keys(target)
    return {
        keys.abort_percent: str(fault.abort_percent) if fault.aborts else "",
        keys.grpc_status: str(fault.code.value[0]) if fault.aborts else "",
        keys.delay_percent: str(fault.delay_percent) if fault.delays else "",
        keys.delay_ms: str(fault.delay_ms) if fault.delays else "",
    }


def clear(admin_url: str, target: str | None = None) -> None:
    """Removes the faults of ``target``, or of every target."""
    targets = TARGETS if target is None else (target,)
    for name in targets:
        _check_target(name)
    values: dict[str, str] = {}
    for name in targets:
        values.update(_runtime_values(name, Fault()))
    EnvoyAdmin(admin_url).set_runtime(values)


def active(admin_url: str) -> dict[str, Fault]:
    """Each target with a fault in force in Envoy, read back from ``/runtime``."""
    entries = json.loads(EnvoyAdmin(admin_url).get("/runtime"))["entries"]
    values = {key: str(entry.get("final_value", "")) for key, entry in entries.items()}
    found = {}
    for target in TARGETS:
        keys = runtime_keys(target)
        raw = {field: values.get(key, "") for field, key in keys._asdict().items()}
        if not any(raw.values()):
            continue
        try:
            status = int(raw["grpc_status"] or Fault().code.value[0])
            fault = Fault(
                abort_percent=int(raw["abort_percent"] or 0),
                code=_CODES_BY_NUMBER[status],
                delay_ms=int(raw["delay_ms"] or 0),
                delay_percent=int(raw["delay_percent"] or 0),
            )
        except (ValueError, KeyError) as error:
            raise FaultError(f"Envoy's runtime keys for {target} do not parse: {raw}") from error
        if fault.active:
            found[target] = fault
    return found


# -- the servers' own knobs --------------------------------------------------------------------


def set_server_fault(
    faults_dir: Path,
    target: str,
    *,
    abort_percent: int | None = None,
    code: str | grpc.StatusCode | None = None,
    delay_ms: int | None = None,
    delay_percent: int | None = None,
) -> Fault:
    """Puts a fault inside ``target``'s server (payment_v1 or payment_v2): in force within
    meshkit.faults.CHECK_INTERVAL_S, as the server looks at its file no more often."""
    _check_target(target, SERVER_TARGETS)
    path = fault_path(faults_dir, target)
    fault = _merged(
        read_fault(path),
        abort_percent=abort_percent,
        code=code,
        delay_ms=delay_ms,
        delay_percent=delay_percent,
    )
    if fault.active:
        write_fault(path, fault)
    else:
        # No file: the server is back at its start-up settings (PAYMENT_FAULT_RATE, ...).
        path.unlink(missing_ok=True)
    return fault


def clear_server(faults_dir: Path, target: str | None = None) -> None:
    targets = SERVER_TARGETS if target is None else (target,)
    for name in targets:
        _check_target(name, SERVER_TARGETS)
    for name in targets:
        fault_path(faults_dir, name).unlink(missing_ok=True)


def active_server(faults_dir: Path) -> dict[str, Fault]:
    found = {}
    for target in SERVER_TARGETS:
        fault = read_fault(fault_path(faults_dir, target))
        if fault is not None and fault.active:
            found[target] = fault
    return found


# -- `make fault` ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """One ``make fault``: list (no target, nothing to set), set, or clear."""

    action: str
    #: envoy or server; None: both (clear), envoy (set).
    at: str | None = None
    target: str | None = None
    abort_percent: int | None = None
    code: grpc.StatusCode | None = None
    delay_ms: int | None = None
    delay_percent: int | None = None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options, named as ``make fault``'s variables (values are checked by
    :func:`parse_request`, so a bad one is one line naming the variable)."""
    parser.add_argument("action", nargs="?", choices=("clear",), help="remove faults")
    parser.add_argument("--target", metavar="TARGET", help=", ".join(TARGETS))
    parser.add_argument("--abort", metavar="ABORT", help="percent of calls to abort, 0..100")
    parser.add_argument("--code", metavar="CODE", help="their gRPC status (UNAVAILABLE)")
    parser.add_argument("--delay-ms", metavar="DELAY_MS", help="delay to add, in ms")
    parser.add_argument("--percent", metavar="PERCENT", help="percent of calls delayed (100)")
    parser.add_argument("--at", metavar="AT", help="envoy (a fault's default) or server")


def _integer(name: str, raw: str | None, hi: int, what: str) -> int | None:
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not 0 <= value <= hi:
        raise FaultError(f"{name}={raw!r}: must be {what} in 0..{hi}")
    return value


def parse_request(args: argparse.Namespace) -> Request:
    """``make fault``'s variables checked; FaultError names the first bad one."""
    at = args.at or None
    if at is not None and at not in LAYERS:
        raise FaultError(f"AT={at!r}: must be one of {', '.join(LAYERS)}")
    targets = SERVER_TARGETS if at == "server" else TARGETS
    if args.target:
        _check_target(args.target, TARGETS)
        if args.target not in targets:
            raise FaultError(
                f"TARGET={args.target!r}: AT=server faults exist only in "
                f"{', '.join(SERVER_TARGETS)} (use AT=envoy)"
            )
    abort = _integer("ABORT", args.abort, 100, "an integer percent")
    percent = _integer("PERCENT", args.percent, 100, "an integer percent")
    delay_ms = _integer("DELAY_MS", args.delay_ms, MAX_DELAY_MS, "an integer number of ms")
    try:
        code = parse_code(args.code) if args.code else None
    except FaultError:
        raise FaultError(f"CODE={args.code!r}: must be one of {', '.join(CODES)}") from None
    if percent is not None and delay_ms is None:
        raise FaultError("PERCENT is the share of calls delayed: give DELAY_MS with it")
    sets = any(v is not None for v in (abort, code, delay_ms))
    if args.action == "clear":
        if sets:
            raise FaultError("make fault clear takes TARGET only (ABORT, CODE, DELAY_MS: no)")
        return Request(action="clear", at=at, target=args.target or None)
    if not sets:
        if args.target:
            raise FaultError(f"TARGET={args.target}: say what to set (ABORT=.., DELAY_MS=..)")
        return Request(action="list", at=at)
    if not args.target:
        raise FaultError(f"a fault needs TARGET (one of {', '.join(targets)})")
    return Request(
        action="set",
        at=at or "envoy",
        target=args.target,
        abort_percent=abort,
        code=code,
        delay_ms=delay_ms,
        delay_percent=percent,
    )


def run(request: Request, admin_url: str, faults_dir: Path, out: TextIO | None = None) -> None:
    """Carries ``request`` out and prints what is in force afterwards."""
    if request.action == "set":
        assert request.target is not None
        changes: Mapping[str, Any] = {
            "abort_percent": request.abort_percent,
            "code": request.code,
            "delay_ms": request.delay_ms,
            "delay_percent": request.delay_percent,
        }
        if request.at == "envoy":
            set_fault(admin_url, request.target, **changes)
        else:
            set_server_fault(faults_dir, request.target, **changes)
    elif request.action == "clear":
        if request.at in (None, "envoy"):
            clear(admin_url, request.target)
        if request.at in (None, "server") and request.target in (None, *SERVER_TARGETS):
            clear_server(faults_dir, request.target)
    print(listing(active(admin_url), active_server(faults_dir)), file=out or sys.stdout)


def listing(envoy: Mapping[str, Fault], server: Mapping[str, Fault]) -> str:
    rows = [(t, "envoy", f) for t, f in envoy.items()] + [
        (t, "server", f) for t, f in server.items()
    ]
    if not rows:
        return "no faults in force (make fault TARGET=... ABORT=... | DELAY_MS=...)"
    lines = [f"{'target':<12} {'at':<7} fault"]
    lines += [f"{t:<12} {at:<7} {f.describe()}" for t, at, f in sorted(rows)]
    return "\n".join(lines)
