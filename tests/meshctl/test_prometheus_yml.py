"""The Prometheus config `up` writes (meshctl.prometheus): one job per program of the registry
with metrics, the checkout's rules, and the real promtool's verdict on the whole."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from meshctl import prometheus
from meshctl.config import StackError
from meshctl.registry import ENVOY, PROGRAMS, PROMETHEUS, REDIS_EXPORTER
from meshctl.testing import stack_config


def test_promtool_accepts_the_rendered_config_and_the_rules_it_loads(tmp_path: Path) -> None:
    config = stack_config(tmp_path / "a dir with spaces", "redis://127.0.0.1:6379/0")
    config.run_dir.mkdir(parents=True)
    config.prometheus_conf.write_text(prometheus.prometheus_yml(config))
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool is missing: `make system-deps` installs prometheus"
    result = subprocess.run(
        [promtool, "check", "config", str(config.prometheus_conf)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert f"Checking {config.prometheus_conf}\n  SUCCESS" in output
    for path in sorted(config.rules_dir.glob(prometheus.RULE_FILES)):
        assert f"Checking {path}\n  SUCCESS" in output


def test_each_program_with_metrics_is_one_job_at_its_address(tmp_path: Path) -> None:
    config = dataclasses.replace(stack_config(tmp_path, "redis://127.0.0.1:6379/0"), host="::")
    rendered = yaml.safe_load(prometheus.prometheus_yml(config))
    assert rendered["global"] == {"scrape_interval": "5s", "evaluation_interval": "5s"}
    jobs = {job["job_name"]: job for job in rendered["scrape_configs"]}
    assert list(jobs) == [p.name for p in PROGRAMS if p.scrape is not None]
    assert {"order", "inventory", "payment_v1", "payment_v2", "envoy"} <= set(jobs)
    assert {PROMETHEUS.name, REDIS_EXPORTER.name} <= set(jobs)
    for program in PROGRAMS:
        if program.scrape is None:
            continue
        job = jobs[program.name]
        [static] = job["static_configs"]
        # Backends listen on MESH_HOST (reached on loopback when that is every interface).
        assert static["targets"] == [f"127.0.0.1:{config.port(program.scrape.port)}"]
        assert job["metrics_path"] == program.scrape.path
    assert jobs[ENVOY.name]["metrics_path"] == "/stats/prometheus"
    assert jobs[ENVOY.name]["metric_relabel_configs"] == prometheus.ENVOY_GRPC_RELABEL
    for program in PROGRAMS:
        if program.backend is not None and program.backend.metrics is not None:
            assert program.scrape is not None
            assert program.scrape.port == program.backend.metrics


def test_rules_are_the_checkouts_deploy_prometheus_files(tmp_path: Path) -> None:
    config = stack_config(tmp_path, "redis://127.0.0.1:6379/0")
    rendered = yaml.safe_load(prometheus.prometheus_yml(config))
    # Absolute: Prometheus reads the config from the run dir, not from the checkout.
    assert rendered["rule_files"] == [
        str(config.root / "deploy" / "prometheus" / name)
        for name in ("alerting_rules.yml", "recording_rules.yml")
    ]


def test_a_checkout_without_rules_is_refused_naming_where_they_belong(tmp_path: Path) -> None:
    config = dataclasses.replace(stack_config(tmp_path, "redis://127.0.0.1:6379/0"), root=tmp_path)
    with pytest.raises(StackError, match="deploy/prometheus holds no"):
        prometheus.prometheus_yml(config)
