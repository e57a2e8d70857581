"""The registry is consistent: what the rest of the launcher derives from it holds together."""

from __future__ import annotations

from meshctl.probes import EnvoyReady
from meshctl.registry import (
    BACKENDS,
    ENVOY,
    PORTS,
    PROGRAMS,
    RECORDER,
    REDIS,
    WORKLOADS,
    program,
)


def test_programs_are_in_start_order_recorder_first_order_last() -> None:
    priorities = [p.priority for p in PROGRAMS]
    assert priorities == sorted(priorities)
    assert PROGRAMS[0] is RECORDER
    assert PROGRAMS[1] is REDIS
    assert PROGRAMS[-1].name == "order"


def test_names_and_port_variables_are_unique() -> None:
    names = [p.name for p in PROGRAMS]
    assert len(names) == len(set(names))
    variables = [port.var for port in PORTS]
    assert len(variables) == len(set(variables))
    assert len({port.default for port in PORTS}) == len(PORTS)


def test_every_backend_holds_a_certificate_and_envoy_checks_each_cluster() -> None:
    for backend in BACKENDS:
        assert backend.backend is not None
        assert backend.workload in WORKLOADS
    assert ENVOY.workload in WORKLOADS
    assert {"inventory", "payment", "notification", "envoy", "order"} == set(WORKLOADS)
    assert isinstance(ENVOY.probe, EnvoyReady)
    assert ENVOY.probe.clusters == tuple(p.name for p in BACKENDS)


def test_only_redis_depends_on_whether_redis_answers() -> None:
    assert [p for p in PROGRAMS if p.only_without_redis] == [REDIS]
    assert [p for p in PROGRAMS if p.listener] == [RECORDER]


def test_program_looks_up_by_name() -> None:
    assert program("envoy") is ENVOY
    assert program("nope") is None


def test_each_service_names_its_traces_and_both_payment_deployments_are_one_service() -> None:
    names = {backend.name: backend.env["OTEL_SERVICE_NAME"] for backend in BACKENDS}
    assert names == {
        "inventory": "inventory",
        "payment_v1": "payment",
        "payment_v2": "payment",
        "notification": "notification",
        "order": "order",
    }
