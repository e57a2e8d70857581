"""supervisord's and Envoy's configs for one stack, both from the registry.

supervisord: the file is written whole with configparser and holds no value from the
environment or the file system. supervisord runs with those in its own environment
(:func:`supervisord_environment`) and the file refers to them as ``%(ENV_X)s``. supervisord
expands a reference once and never reads the result as config again, so a path or a variable
may hold ``%``, quotes, commas or newlines and nothing is escaped. Two exceptions, both handled
where the value is chosen: supervisord splits a command into words (shlex) after expanding it, so
what a command refers to is put in the environment as one shell word (``shlex.quote``, the
inverse of that split); and it expands a program's log file path twice, so the log dir cannot
hold ``%`` (refused, with the reason).

Envoy: deploy/envoy/envoy.yaml holds the listeners, routes and RBAC, and one cluster template
that each backend of the registry gets a copy of. ``${NAME}`` placeholders are filled in the
parsed YAML and the result is written by the YAML library, so no value is spliced into YAML text.
"""

from __future__ import annotations

import configparser
import copy
import io
import os
import re
import shlex
import shutil
import urllib.parse
from collections.abc import Mapping
from typing import Any

import yaml

from meshctl import envoy, envoy_tracing, faults
from meshctl.config import StackConfig, StackError
from meshctl.registry import (
    BACKENDS,
    CANARY,
    ENVOY_BINARY,
    PROGRAMS,
    PROMETHEUS_BINARY,
    PROMETHEUS_DATA,
    PYTHON,
    REDIS_EXPORTER_BINARY,
    REDIS_PORT,
    REDIS_SERVER,
    REDIS_TARGET,
    Loopback,
    Port,
    Program,
    Var,
    Word,
)
from meshkit import tls

SOCKET_FILE = "supervisor.sock"
PIDFILE = "supervisord.pid"
ROOT = Var("MESHCTL_ROOT")
LOG_DIR = Var("MESHCTL_LOG_DIR")

_HEADER = """\
; supervisord for resilient-mesh, written by meshctl from its registry at every `make up`.
; %(ENV_X)s is X from supervisord's environment; %(here)s is this file's directory.
; Use: supervisorctl -c <this file> status

"""
#: Every program: its own process group stopped as a whole (no orphan survives `down`), stderr
#: merged into one log per program, restarted if it dies.
_PROGRAM = {
    "autorestart": "true",
    "startsecs": "1",
    "stopsignal": "TERM",
    "stopwaitsecs": "10",
    "stopasgroup": "true",
    "killasgroup": "true",
    "redirect_stderr": "true",
    "stdout_logfile_maxbytes": "10MB",
    "stdout_logfile_backups": "1",
}
#: The event listener's stdout is supervisord's event protocol, so only stderr is a log.
_LISTENER = {
    "events": "PROCESS_STATE",
    "buffer_size": "100",
    "autorestart": "true",
    "startsecs": "0",
    "stopsignal": "TERM",
    "stopwaitsecs": "10",
    "stopasgroup": "true",
    "killasgroup": "true",
    "stderr_logfile_maxbytes": "1MB",
    "stderr_logfile_backups": "1",
}
_PLACEHOLDER = re.compile(r"\$\{(\w+)\}")


def program_environment(config: StackConfig) -> dict[str, str]:
    """What every program sees (on top of the launcher's own environment)."""
    env = {var: str(number) for var, number in config.ports.items()}
    env.update(
        MESH_HOST=config.host,
        DATA_DIR=str(config.data_dir),
        REDIS_URL=config.redis_url,
        MESH_MTLS="1" if config.mtls else "0",
        MESH_CERTS_DIR=str(config.certs_dir),
        MESH_FAULTS_DIR=str(config.faults_dir),
        # Service-to-service calls go through Envoy's internal listener, as through a
        # sidecar: mTLS, RBAC and the payment canary apply to them.
        INVENTORY_TARGET=config.internal_target,
        PAYMENT_TARGET=config.internal_target,
        PYTHONUNBUFFERED="1",
    )
    env.update(config.env)
    return env


def supervisord_environment(config: StackConfig, *, own_redis: bool) -> dict[str, str]:
    """What supervisord runs with: what every program sees, and what its config refers to."""
    if "%" in str(config.log_dir):
        raise StackError(
            f"log dir {config.log_dir}: supervisord expands a program's log path twice, "
            "so it cannot hold '%' (set MESH_VAR_DIR elsewhere)"
        )
    env = program_environment(config)
    env[ROOT.name] = str(config.root)
    env[LOG_DIR.name] = str(config.log_dir)
    env[PYTHON.name] = shlex.quote(config.python)
    env[ENVOY_BINARY.name] = shlex.quote(envoy.binary())
    env[PROMETHEUS_BINARY.name] = shlex.quote(_installed("prometheus"))
    env[PROMETHEUS_DATA.name] = shlex.quote(str(config.prometheus_data))
    env[REDIS_EXPORTER_BINARY.name] = shlex.quote(_installed("prometheus-redis-exporter"))
    env[REDIS_TARGET.name] = shlex.quote(config.redis_url)
    if own_redis:
        env[REDIS_SERVER.name] = shlex.quote(_redis_server(config))
        env[REDIS_PORT.name] = str(urllib.parse.urlsplit(config.redis_url).port or 6379)
    return env


def supervisord_conf(*, own_redis: bool) -> str:
    """The whole supervisord config; Redis is in it only when the stack runs its own."""
    parser = configparser.RawConfigParser()
    parser.read_dict(
        {
            "unix_http_server": {"file": f"%(here)s/{SOCKET_FILE}", "chmod": "0700"},
            "supervisorctl": {"serverurl": f"unix://%(here)s/{SOCKET_FILE}"},
            "rpcinterface:supervisor": {
                "supervisor.rpcinterface_factory": "supervisor.rpcinterface:make_main_rpcinterface"
            },
            "supervisord": {
                "pidfile": f"%(here)s/{PIDFILE}",
                "logfile": f"{_ref(LOG_DIR)}/supervisord.log",
                "logfile_maxbytes": "10MB",
                "logfile_backups": "1",
                "childlogdir": _ref(LOG_DIR),
                "directory": _ref(ROOT),
                "identifier": "resilient-mesh",
                "nodaemon": "false",
            },
        }
    )
    for program in PROGRAMS:
        if own_redis or not program.only_without_redis:
            parser.read_dict({section(program): _settings(program)})
    out = io.StringIO()
    out.write(_HEADER)
    parser.write(out)
    return out.getvalue()


def section(program: Program) -> str:
    return f"{'eventlistener' if program.listener else 'program'}:{program.name}"


def _settings(program: Program) -> dict[str, str]:
    log = f"{_ref(LOG_DIR)}/{program.name}.log"
    settings = {
        "command": " ".join(_command_word(word) for word in program.command),
        "priority": str(program.priority),
    }
    if program.in_run_dir:
        settings["directory"] = "%(here)s"
    if program.env:
        # Registry constants and port numbers only, none holding a quote or a comma.
        settings["environment"] = ",".join(
            f'{key}="{value if isinstance(value, str) else _expanded(value)}"'
            for key, value in program.env.items()
        )
    if program.listener:
        return {**settings, **_LISTENER, "stderr_logfile": log}
    return {**settings, **_PROGRAM, "stdout_logfile": log}


def _command_word(word: Word) -> str:
    # A Var already is one shell word (supervisord_environment); a port is a number.
    return shlex.quote(word) if isinstance(word, str) else _expanded(word)


def _expanded(word: Port | Var | Loopback) -> str:
    return f"127.0.0.1:{_ref(word.port)}" if isinstance(word, Loopback) else _ref(word)


def _ref(value: Port | Var) -> str:
    return f"%(ENV_{value.var if isinstance(value, Port) else value.name})s"


def _installed(command: str) -> str:
    binary = shutil.which(command)
    if binary is None:
        raise StackError(f"{command} is not installed (make setup installs it with apt)")
    return binary


def _redis_server(config: StackConfig) -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise StackError(
            f"nothing answers at REDIS_URL={config.redis_url} and redis-server is not installed "
            "(make setup installs it)"
        )
    parsed = urllib.parse.urlsplit(config.redis_url)
    if parsed.scheme != "redis" or parsed.hostname not in ("127.0.0.1", "localhost"):
        raise StackError(
            f"nothing answers at REDIS_URL={config.redis_url}; the stack starts Redis only on "
            "127.0.0.1: start yours or point REDIS_URL at a running Redis"
        )
    return binary


def envoy_yaml(config: StackConfig) -> str:
    """deploy/envoy/envoy.yaml for this stack: its ports and paths, one cluster per backend,
    with MESH_MTLS=0 no TLS and no RBAC, and with OTEL_EXPORTER_OTLP_ENDPOINT Envoy's spans."""
    path = config.envoy_template
    try:
        template: dict[str, Any] = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise StackError(
            f"{path} is missing: meshctl reads deploy/ from the checkout it is installed from "
            "(pip install -e libs/meshctl)"
        ) from None
    clusters = template["static_resources"].pop("clusters")
    if len(clusters) != 1:
        raise StackError(f"{path}: clusters must hold exactly one entry, the cluster template")
    values: dict[str, object] = {
        **config.ports,
        "HOST": config.backend_host,
        "CERTS_DIR": str(config.certs_dir),
        "ACCESS_LOG": str(config.access_log),
    }
    rendered: dict[str, Any] = _fill(template, values)
    rendered["static_resources"]["clusters"] = [
        _fill(clusters[0], {**values, **_cluster_values(config, program)}) for program in BACKENDS
    ]
    _fail_over_between(rendered["static_resources"]["clusters"], CANARY)
    faults.with_per_cluster_faults(rendered)
    unknown = _routed_clusters(rendered) - {program.name for program in BACKENDS}
    if unknown:
        raise StackError(f"{path} routes to clusters the registry has no backend for: {unknown}")
    if not config.mtls:
        rendered = _plaintext(rendered)
    if config.traces_endpoint is not None:
        rendered = envoy_tracing.traced(
            rendered,
            config.traces_endpoint,
            sampling=envoy_tracing.sampling_percent({**os.environ, **config.env}),
        )
    return yaml.safe_dump(rendered, sort_keys=False)


def _fail_over_between(clusters: list[dict[str, Any]], pair: tuple[Program, Program]) -> None:
    """Each cluster of ``pair`` gets the other's endpoint as its priority 1.

    The canary's weights pick a cluster per request, and with one host per cluster nothing
    else would move a request off a dead deployment (Envoy's panic mode keeps sending to it).
    As priority 1 the other deployment takes the share of one whose host is ejected or
    unhealthy, and the route's retry of a connect failure goes to it (previous_priorities).
    The split, its runtime keys and the per-cluster stats stay as they are; while one
    deployment is down, the other's requests count under both clusters' names (the access
    log's upstream_host says which process served each).
    """
    by_name = {cluster["name"]: cluster for cluster in clusters}
    first, second = (by_name[program.name] for program in pair)
    own = {name: cluster["load_assignment"]["endpoints"][0] for name, cluster in by_name.items()}
    for cluster, other in ((first, second), (second, first)):
        fallback = copy.deepcopy(own[other["name"]]["lb_endpoints"])
        cluster["load_assignment"]["endpoints"].append({"priority": 1, "lb_endpoints": fallback})


def _cluster_values(config: StackConfig, program: Program) -> dict[str, object]:
    assert program.backend is not None
    assert program.workload is not None
    return {
        "CLUSTER": program.name,
        "BACKEND_PORT": config.port(program.backend.port),
        "IDENTITY": tls.spiffe_id(program.workload),
        "HEALTH_SERVICE": program.backend.health_service,
    }


def _fill(node: Any, values: Mapping[str, object]) -> Any:
    """``node`` with every ``${NAME}`` filled in; a string that is one placeholder becomes the
    value itself, so a port stays a number."""
    if isinstance(node, dict):
        return {key: _fill(value, values) for key, value in node.items()}
    if isinstance(node, list):
        return [_fill(item, values) for item in node]
    if not isinstance(node, str):
        return node

    def value(name: str) -> object:
        if name not in values:
            raise StackError(f"envoy.yaml: unknown placeholder ${{{name}}}")
        return values[name]

    whole = _PLACEHOLDER.fullmatch(node)
    if whole:
        return value(whole[1])
    return _PLACEHOLDER.sub(lambda match: str(value(match[1])), node)


def _routed_clusters(node: Any) -> set[str]:
    """Every cluster a route of ``node`` sends requests to."""
    found: set[str] = set()
    if isinstance(node, list):
        for item in node:
            found |= _routed_clusters(item)
    elif isinstance(node, dict):
        route = node.get("route")
        if isinstance(route, dict):
            if "cluster" in route:
                found.add(route["cluster"])
            weighted = route.get("weighted_clusters", {}).get("clusters", [])
            found.update(cluster["name"] for cluster in weighted)
        for value in node.values():
            found |= _routed_clusters(value)
    return found


def _plaintext(config: dict[str, Any]) -> dict[str, Any]:
    """Envoy's config without TLS anywhere and without the internal listener's RBAC, which
    could not tell callers apart without their certificates (MESH_MTLS=0)."""

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {key: strip(value) for key, value in node.items() if key != "transport_socket"}
        if isinstance(node, list):
            return [
                strip(item)
                for item in node
                if not (isinstance(item, dict) and item.get("name") == "envoy.filters.http.rbac")
            ]
        return node

    stripped: dict[str, Any] = strip(config)
    return stripped
