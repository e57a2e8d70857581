"""`make up|status|logs|down` through the CLI: `up` twice is harmless, `down` leaves no process
behind."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from meshctl.cli import main
from meshctl.config import StackConfig
from meshctl.registry import PORTS, PROGRAMS
from meshctl.stack import Stack
from meshctl.testing import assert_all_gone
from meshkit.testing import free_ports

pytestmark = pytest.mark.stack


def test_make_up_starts_its_own_redis_when_none_answers_and_make_down_leaves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI path of `make up|status|down`, configured only by environment variables."""
    *service_ports, redis_port = free_ports(len(PORTS) + 1)
    env = {port.var: str(number) for port, number in zip(PORTS, service_ports, strict=True)}
    env["MESH_VAR_DIR"] = str(tmp_path)
    env["REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
    stack = Stack(StackConfig.from_env(env))
    try:
        # Nothing listens at REDIS_URL, so `up` runs redis-server under supervisord too.
        assert main(["up"], env) == 0
        assert "started by the stack" in capsys.readouterr().out
        pids = stack.supervisor.pids()
        assert set(pids) == {"supervisord", *(p.name for p in PROGRAMS)}

        assert main(["up"], env) == 0  # a second `make up` reports and changes nothing
        assert "already running" in capsys.readouterr().out
        assert stack.supervisor.pids() == pids

        assert main(["status"], env) == 0
        status = capsys.readouterr().out
        for name in (p.name for p in PROGRAMS):
            assert re.search(rf"^  {name} +RUNNING +{pids[name]}  SERVING$", status, re.M), status

        assert main(["logs"], {**env, "LINES": "5"}) == 0
        logs = capsys.readouterr().out
        assert f"==> {tmp_path / 'log' / 'order.log'} <==" in logs
        assert f"==> {tmp_path / 'log' / 'redis.log'} <==" in logs
        assert f"==> {tmp_path / 'log' / 'envoy-access.log'} <==" in logs
        # The services' JSON lines read as one short line each, or as written with json.
        serving = r"^\d\d:\d\d:\d\d\.\d{3} order INFO serving mesh\.order\.v1\.OrderService on "
        assert re.search(serving, logs, re.M), logs
        assert main(["logs"], {**env, "LINES": "5", "LOGS_FORMAT": "json"}) == 0
        raw = capsys.readouterr().out
        assert re.search(r'^\{"timestamp": .*"message": "serving mesh\.order\.v1', raw, re.M), raw
    finally:
        pids = stack.supervisor.pids() if stack.supervisor.is_running() else {}
        assert main(["down"], env) == 0
    assert_all_gone(pids)
    assert main(["status"], env) == 0
    assert "not running" in capsys.readouterr().out
    assert main(["down"], env) == 0  # a second `make down` is harmless too


def test_a_bad_setting_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status"], {"EDGE_PORT": "http"}) == 2
    assert capsys.readouterr().err.splitlines() == [
        "meshctl: EDGE_PORT='http': must be an integer in 1..65535"
    ]
