"""``python -m notification_service`` as a real process: a bad setting stops it at once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def _run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "notification_service", *args],
        env={**os.environ, "DATA_DIR": str(tmp_path), "MESH_MTLS": "0", **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_a_bad_setting_exits_2_with_one_line_naming_it(tmp_path: Path) -> None:
    done = _run(tmp_path, NOTIFICATION_CLAIM_IDLE_MS="soon")
    assert done.returncode == 2
    assert done.stderr == (
        "notification: NOTIFICATION_CLAIM_IDLE_MS='soon': must be an integer in 1..86400000\n"
    )


def test_replay_refuses_a_limit_below_one(tmp_path: Path) -> None:
    done = _run(tmp_path, "replay-dead-letters", "--limit", "0")
    assert done.returncode == 2
    assert "--limit must be >= 1" in done.stderr
