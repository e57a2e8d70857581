"""The admin client against a real HTTP server on port 0 that answers as Envoy's admin does."""

from __future__ import annotations

import http.server
import threading
import urllib.error
from collections.abc import Iterator
from typing import ClassVar

import pytest

from meshctl.envoy import EnvoyAdmin
from meshkit.testing import free_port

CLUSTERS_PAGE = """\
catalog::observability_name::catalog
catalog::127.0.0.1:50050::health_flags::healthy
payment_v2::127.0.0.1:50054::health_flags::/failed_active_hc
payment_v2::127.0.0.1:50054::cx_active::0
payment_v2::127.0.0.1:50053::health_flags::healthy
payment_v1::127.0.0.1:50053::health_flags::healthy
payment_v1::127.0.0.1:50054::health_flags::/failed_active_hc
"""


STATS_PAGE = """\
cluster.catalog.health_check.success: 7
cluster.payment_v2.health_check.success: 3
"""


class FakeAdmin(http.server.BaseHTTPRequestHandler):
    posted: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        if self.path == "/clusters":
            self._answer(CLUSTERS_PAGE)
        else:
            self._answer(STATS_PAGE if self.path.startswith("/stats?filter=health_check") else "")

    def do_POST(self) -> None:
        self.posted.append(self.path)
        self._answer("OK\n")

    def _answer(self, body: str) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *_args: object) -> None:
        return


@pytest.fixture
def admin() -> Iterator[EnvoyAdmin]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeAdmin)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    FakeAdmin.posted = []
    yield EnvoyAdmin(f"http://127.0.0.1:{server.server_address[1]}")
    server.shutdown()
    server.server_close()


def test_a_cluster_is_healthy_only_when_each_of_its_hosts_is(admin: EnvoyAdmin) -> None:
    # The failover host of payment_v1 still fails its checks, though its own host passes.
    assert admin.cluster_health() == {
        "catalog": "healthy",
        "payment_v2": "/failed_active_hc",
        "payment_v1": "/failed_active_hc",
    }


def test_hosts_and_passed_health_checks_are_counted_per_cluster(admin: EnvoyAdmin) -> None:
    assert admin.hosts_per_cluster() == {"catalog": 1, "payment_v2": 2, "payment_v1": 2}
    assert admin.health_checks_passed() == {"catalog": 7, "payment_v2": 3}


def test_runtime_keys_are_set_in_one_call(admin: EnvoyAdmin) -> None:
    admin.set_runtime({"routing.payment.payment_v1": 0, "routing.payment.payment_v2": 100})
    assert FakeAdmin.posted == [
        "/runtime_modify?routing.payment.payment_v1=0&routing.payment.payment_v2=100"
    ]


def test_an_admin_that_is_not_there_is_an_os_error() -> None:
    # URLError is an OSError: what the Envoy probe reports as "admin unreachable".
    with pytest.raises(urllib.error.URLError, match="refused"):
        EnvoyAdmin(f"http://127.0.0.1:{free_port()}", timeout_s=0.5).get("/clusters")
