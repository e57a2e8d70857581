"""meshctl.faults without a stack: what `make fault` accepts, the settings Envoy's routes get,
and the servers' fault files (the live behaviour is tests/stack/test_faults.py)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from meshctl import faults, render
from meshctl.cli import main
from meshctl.faults import FaultError, Request, parse_request
from meshctl.testing import stack_config
from meshkit.faults import Fault


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    faults.add_arguments(parser)
    return parser.parse_args(argv)


def test_options_become_a_request() -> None:
    assert parse_request(_args()) == Request(action="list")
    assert parse_request(_args("clear")) == Request(action="clear")
    assert parse_request(_args("clear", "--target", "inventory", "--at", "envoy")) == Request(
        action="clear", at="envoy", target="inventory"
    )
    assert parse_request(
        _args("--target", "payment_v2", "--abort", "20", "--code", "unavailable")
    ) == Request(
        action="set",
        at="envoy",
        target="payment_v2",
        abort_percent=20,
        code=grpc.StatusCode.UNAVAILABLE,
    )
    assert parse_request(
        _args("--target", "payment_v1", "--delay-ms", "800", "--percent", "50", "--at", "server")
    ) == Request(action="set", at="server", target="payment_v1", delay_ms=800, delay_percent=50)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--target", "orders", "--abort", "5"), "TARGET='orders': must be one of inventory"),
        (("--target", "inventory", "--abort", "101"), "ABORT='101': must be an integer percent"),
        (("--target", "inventory", "--abort", "ten"), "ABORT='ten': must be an integer percent"),
        (("--target", "inventory", "--abort", "5", "--code", "SLOW"), "CODE='SLOW': must be one"),
        (("--target", "inventory", "--abort", "5", "--code", "OK"), "CODE='OK': must be one"),
        (("--target", "inventory", "--delay-ms", "-1"), "DELAY_MS='-1': must be an integer"),
        (("--target", "inventory", "--delay-ms", "5", "--percent", "-3"), "PERCENT='-3'"),
        (("--target", "inventory", "--percent", "50"), "give DELAY_MS with it"),
        (("--abort", "5"), "a fault needs TARGET"),
        (
            (
                "--target",
                "inventory",
            ),
            "say what to set",
        ),
        (("--target", "inventory", "--abort", "5", "--at", "server"), "AT=server faults exist"),
        (("--target", "inventory", "--abort", "5", "--at", "sidecar"), "AT='sidecar'"),
        (("clear", "--abort", "5"), "make fault clear takes TARGET only"),
    ],
)
def test_a_bad_value_is_refused_naming_it(argv: tuple[str, ...], message: str) -> None:
    with pytest.raises(FaultError, match=message.replace("(", r"\(")):
        parse_request(_args(*argv))


def test_the_cli_refuses_a_bad_value_in_one_line_with_exit_2_before_looking_for_a_stack(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {"MESH_VAR_DIR": str(tmp_path)}  # nothing runs there

    assert main(["fault", "--target", "payment_v2", "--abort", "150"], env) == 2

    err = capsys.readouterr().err
    assert err == "meshctl fault: ABORT='150': must be an integer percent in 0..100\n"


def test_a_listing_names_each_target_and_layer() -> None:
    text = faults.listing(
        {"payment_v2": Fault(abort_percent=20)},
        {"payment_v1": Fault(delay_ms=300, delay_percent=100)},
    )
    assert text.splitlines() == [
        "target       at      fault",
        "payment_v1   server  delay 300 ms on 100%",
        "payment_v2   envoy   abort 20% UNAVAILABLE",
    ]
    assert faults.listing({}, {}).startswith("no faults in force")


def _routes(config: dict[str, Any], listener: str) -> list[dict[str, Any]]:
    (found,) = (
        item for item in config["static_resources"]["listeners"] if item["name"] == listener
    )
    manager = found["filter_chains"][0]["filters"][0]["typed_config"]
    routes: list[dict[str, Any]] = manager["route_config"]["virtual_hosts"][0]["routes"]
    return routes


def _fault_keys(per_filter: dict[str, Any]) -> str:
    settings = per_filter[faults.FILTER]
    assert settings["abort"]["percentage"]["numerator"] == 0  # off until the runtime says so
    assert settings["delay"]["percentage"]["numerator"] == 0
    key: str = settings["abort_percent_runtime"]
    return key


def test_each_internal_route_and_weighted_cluster_gets_its_targets_runtime_keys(
    tmp_path: Path,
) -> None:
    config = yaml.safe_load(render.envoy_yaml(stack_config(tmp_path, "redis://127.0.0.1:1/0")))
    keyed: dict[str, str] = {}
    for route in _routes(config, "internal"):
        action = route["route"]
        if "cluster" in action and "typed_per_filter_config" in route:
            name = action["cluster"] + ("+pin" if "headers" in route["match"] else "")
            keyed[name] = _fault_keys(route["typed_per_filter_config"])
        for weighted in action.get("weighted_clusters", {}).get("clusters", ()):
            keyed["split:" + weighted["name"]] = _fault_keys(weighted["typed_per_filter_config"])

    assert keyed == {
        "inventory": "fault.inventory.abort.abort_percent",
        # The x-canary pin sends to v2, so it carries v2's fault.
        "payment_v2+pin": "fault.payment_v2.abort.abort_percent",
        "split:payment_v1": "fault.payment_v1.abort.abort_percent",
        "split:payment_v2": "fault.payment_v2.abort.abort_percent",
    }
    # The edge has no fault filter, and so no fault settings.
    assert faults.FILTER not in str(_routes(config, "edge"))


def test_server_faults_merge_into_the_file_and_clear_removes_it(tmp_path: Path) -> None:
    assert faults.set_server_fault(tmp_path, "payment_v2", delay_ms=300) == Fault(
        delay_ms=300, delay_percent=100
    )
    both = faults.set_server_fault(tmp_path, "payment_v2", abort_percent=10, code="INTERNAL")
    assert both == Fault(
        abort_percent=10, code=grpc.StatusCode.INTERNAL, delay_ms=300, delay_percent=100
    )
    assert faults.active_server(tmp_path) == {"payment_v2": both}

    faults.set_server_fault(tmp_path, "payment_v2", abort_percent=0, delay_ms=0)
    assert faults.active_server(tmp_path) == {}
    assert not list(tmp_path.iterdir())  # nothing in force: the start-up settings again

    faults.set_server_fault(tmp_path, "payment_v1", abort_percent=1)
    faults.clear_server(tmp_path)
    assert faults.active_server(tmp_path) == {}
    with pytest.raises(FaultError, match="TARGET='inventory'"):
        faults.set_server_fault(tmp_path, "inventory", abort_percent=1)
