"""Prometheus's config for one stack, from the registry: each program with metrics is one scrape
job named after it, and the rules are the checkout's ``deploy/prometheus/*_rules.yml``.

The config is built as data and written by the YAML library, as Envoy's is (meshctl.render).
"""

from __future__ import annotations

from typing import Any

import yaml

from meshctl.config import StackConfig, StackError
from meshctl.registry import ENVOY, PROGRAMS, Program, Scrape

#: Scrapes and rule evaluations every 5 s: with Prometheus's default of 60 s a new stack's
#: rate() panels stay empty for minutes.
INTERVAL = "5s"
RULE_FILES = "*_rules.yml"
#: Exemplars kept in memory; Prometheus's default (100 000) costs more RSS than a dev mesh needs.
MAX_EXEMPLARS = 10_000

#: Envoy's grpc_stats counters (cluster.<name>.grpc.<package>.<Service>.<Method>.{success,
#: failure,total}) reach Prometheus as one metric name per method, with the package's first two
#: parts misread as labels: ``envoy_cluster_grpc_v1_OrderService_CreateOrder_failure
#: {envoy_grpc_bridge_service="mesh", envoy_grpc_bridge_method="order"}``. Different names with
#: equal labels cannot share one rate(), so these rules turn them into
#: ``envoy_cluster_grpc_failure{grpc_service="mesh.order.v1.OrderService",
#: grpc_method="CreateOrder"}``, the labels the services' own metrics carry. The package is
#: taken to have three parts (``mesh.order.v1``, ``grpc.health.v1``), as every package here has.
_GRPC_STAT = (
    r"([^;]+);([^;]+);envoy_cluster_grpc_([A-Za-z0-9]+)_([A-Za-z0-9]+)_([A-Za-z0-9]+)"
    r"_(success|failure|total)"
)
_GRPC_SOURCE = ["envoy_grpc_bridge_service", "envoy_grpc_bridge_method", "__name__"]
_RENAMED = "envoy_cluster_grpc_(success|failure|total);.+"
ENVOY_GRPC_RELABEL: list[dict[str, Any]] = [
    {
        "source_labels": _GRPC_SOURCE,
        "regex": _GRPC_STAT,
        "target_label": "grpc_service",
        "replacement": "${1}.${2}.${3}.${4}",
    },
    {
        "source_labels": _GRPC_SOURCE,
        "regex": _GRPC_STAT,
        "target_label": "grpc_method",
        "replacement": "${5}",
    },
    {
        "source_labels": _GRPC_SOURCE,
        "regex": _GRPC_STAT,
        "target_label": "__name__",
        "replacement": "envoy_cluster_grpc_${6}",
    },
    # An empty value removes the label: the misread ones go from the renamed series only.
    *(
        {
            "source_labels": ["__name__", "grpc_service"],
            "regex": _RENAMED,
            "target_label": label,
            "replacement": "",
        }
        for label in _GRPC_SOURCE[:2]
    ),
]


def prometheus_yml(config: StackConfig) -> str:
    """The whole config: a job per program of the registry that has metrics, and the rules."""
    rules = sorted(config.rules_dir.glob(RULE_FILES))
    if not rules:
        raise StackError(
            f"{config.rules_dir} holds no {RULE_FILES}: meshctl reads deploy/ from the checkout "
            "it is installed from (pip install -e libs/meshctl)"
        )
    document = {
        "global": {"scrape_interval": INTERVAL, "evaluation_interval": INTERVAL},
        "rule_files": [str(path) for path in rules],
        "storage": {"exemplars": {"max_exemplars": MAX_EXEMPLARS}},
        "scrape_configs": [
            _job(config, program, program.scrape) for program in PROGRAMS if program.scrape
        ],
    }
    return yaml.safe_dump(document, sort_keys=False)


def _job(config: StackConfig, program: Program, scrape: Scrape) -> dict[str, Any]:
    # Backends bind MESH_HOST; everything else listens on loopback.
    host = config.backend_host if program.backend is not None else "127.0.0.1"
    job: dict[str, Any] = {
        "job_name": program.name,
        "metrics_path": scrape.path,
        "static_configs": [{"targets": [f"{host}:{config.port(scrape.port)}"]}],
    }
    if program is ENVOY:
        # Envoy: only the stats that have ever changed, about a third of its ~2900 series.
        job["params"] = {"usedonly": [""]}
        job["metric_relabel_configs"] = ENVOY_GRPC_RELABEL
    return job
