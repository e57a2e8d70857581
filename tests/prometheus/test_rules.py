"""deploy/prometheus's rules, checked and unit-tested by the real promtool (Debian's
prometheus package, which `make setup` installs)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from meshctl.config import REPO_ROOT
from meshctl.prometheus import RULE_FILES
from order_service.domain import Reason

RULES_DIR = REPO_ROOT / "deploy" / "prometheus"


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary is not None, "promtool is missing: `make system-deps` installs prometheus"
    return subprocess.run(
        [binary, *map(str, args)], capture_output=True, text=True, check=False, timeout=120
    )


def rule_files() -> list[Path]:
    return sorted(RULES_DIR.glob(RULE_FILES))


def test_there_are_recording_and_alerting_rules() -> None:
    assert [path.name for path in rule_files()] == ["alerting_rules.yml", "recording_rules.yml"]


@pytest.mark.parametrize("path", rule_files(), ids=lambda path: path.name)
def test_each_rules_file_passes_promtool_check_rules(path: Path) -> None:
    result = promtool("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_recording_rule_and_both_burn_rate_alerts_pass_their_unit_tests() -> None:
    """rules_test.yml: each recording rule's value on synthetic series, a fast burn that
    pages and a slow one that stays silent, for availability, latency and order outcomes."""
    result = promtool("test", "rules", RULES_DIR / "rules_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_unit_tests_load_every_rules_file_and_cover_every_rule() -> None:
    text = (RULES_DIR / "rules_test.yml").read_text()
    tests = yaml.safe_load(text)
    assert sorted(tests["rule_files"]) == [path.name for path in rule_files()]
    rules = [
        rule
        for path in rule_files()
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]
    # An expected sample names its series: `<recorded name>{labels}`.
    untested = {rule["record"] for rule in rules if "record" in rule} - {
        name for name in re.findall(r"'([a-z_]+:[a-z0-9_]+:[a-z0-9_]+)\{", text)
    }
    assert untested == set(), "recording rules with no expected sample in rules_test.yml"
    alerted = {
        test["alertname"] for case in tests["tests"] for test in case.get("alert_rule_test", [])
    }
    assert alerted == {rule["alert"] for rule in rules if "alert" in rule}


def test_the_outcome_slo_leaves_out_exactly_the_ends_the_order_service_calls_chosen() -> None:
    """The fault ratio's reason!~ regex against order_service.domain.Reason.chosen (none is
    CONFIRMED's, which outcome="FAILED" leaves out already)."""
    [group] = [
        group
        for group in yaml.safe_load((RULES_DIR / "recording_rules.yml").read_text())["groups"]
        if group["name"] == "slo_order_outcomes"
    ]
    excluded = {
        frozenset(found.split("|"))
        for rule in group["rules"]
        for found in re.findall(r'reason!~"([^"]+)"', rule["expr"])
    }
    assert excluded == {frozenset(r.value for r in Reason if r.chosen and r is not Reason.NONE)}
    assert len(group["rules"]) == 4
