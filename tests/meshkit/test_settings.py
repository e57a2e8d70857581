"""Declared settings: read from the environment, checked at construction, one line on failure."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from meshkit import settings
from meshkit.settings import SettingsError

WORKERS = settings.integer("DEMO_WORKERS", 8, lo=1, hi=64, doc="threads")
RATE = settings.number("DEMO_RATE", 0.5, lo=0, hi=1, doc="a fraction")
PORT = settings.port("DEMO_PORT", 7000, doc="where it listens")
MODE = settings.choice("DEMO_MODE", "fast", ("fast", "safe"), doc="how it runs")
ON = settings.flag("DEMO_ON", True, doc="a switch")
DIR = settings.path("DEMO_DIR", "var/demo", doc="a directory")


@dataclass(frozen=True, slots=True, kw_only=True)
class Demo:
    workers: int = WORKERS.field()
    rate: float = RATE.field()
    port: int | None = PORT.field()
    mode: str = MODE.field()
    on: bool = ON.field()
    directory: Path = DIR.required()
    extra: str = "given"

    def __post_init__(self) -> None:
        settings.check_fields(self)


def test_defaults_come_from_the_declarations() -> None:
    demo = settings.from_env(Demo, {})
    assert (demo.workers, demo.rate, demo.port, demo.mode, demo.on) == (8, 0.5, 7000, "fast", True)
    assert demo.directory == Path("var/demo").resolve()


def test_every_declared_variable_is_read_and_given_fields_pass_through() -> None:
    env = {
        "DEMO_WORKERS": "16",
        "DEMO_RATE": "0.25",
        "DEMO_PORT": "0",
        "DEMO_MODE": "safe",
        "DEMO_ON": "off",
        "DEMO_DIR": "/srv/demo",
    }
    demo = settings.from_env(Demo, env, extra="derived")
    assert demo == Demo(
        workers=16,
        rate=0.25,
        port=0,
        mode="safe",
        on=False,
        directory=Path("/srv/demo"),
        extra="derived",
    )


def test_an_empty_value_means_the_default() -> None:
    assert settings.from_env(Demo, {"DEMO_WORKERS": ""}).workers == 8


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DEMO_WORKERS": "0"}, "DEMO_WORKERS=0: must be an integer in 1..64"),
        ({"DEMO_WORKERS": "many"}, "DEMO_WORKERS='many': must be an integer in 1..64"),
        ({"DEMO_RATE": "nan"}, "DEMO_RATE='nan': must be a number in 0..1"),
        ({"DEMO_RATE": "1.5"}, "DEMO_RATE=1.5: must be a number in 0..1"),
        ({"DEMO_PORT": "70000"}, "DEMO_PORT=70000: must be an integer in 0..65535"),
        ({"DEMO_MODE": "slow"}, "DEMO_MODE='slow': must be one of fast, safe"),
        ({"DEMO_ON": "maybe"}, "DEMO_ON='maybe': must be 1 or 0 (true/false)"),
    ],
)
def test_a_bad_value_names_the_variable_and_what_it_allows(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError) as raised:
        settings.from_env(Demo, env)
    assert str(raised.value) == message


def test_values_built_in_code_are_checked_too() -> None:
    with pytest.raises(SettingsError, match="DEMO_WORKERS=65"):
        Demo(workers=65, directory=Path("/srv"))
    assert Demo(port=None, directory=Path("/srv")).port is None  # None: switched off


def test_variables_lists_the_declarations_in_field_order() -> None:
    assert [var.name for var in settings.variables(Demo)] == [
        "DEMO_WORKERS",
        "DEMO_RATE",
        "DEMO_PORT",
        "DEMO_MODE",
        "DEMO_ON",
        "DEMO_DIR",
    ]


def test_redis_url_must_be_a_redis_url() -> None:
    with pytest.raises(SettingsError, match="REDIS_URL='http://x': must be a URL starting"):
        settings.REDIS_URL.read({"REDIS_URL": "http://x"})


@pytest.mark.parametrize(
    ("program", "var"),
    [
        ("order_service", "ORDER_PORT"),
        ("inventory_service", "INVENTORY_PORT"),
        ("payment_service", "PAYMENT_PORT"),
    ],
)
def test_a_process_with_a_bad_setting_exits_2_with_one_line(program: str, var: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", program],
        env={"MESH_MTLS": "0", var: "70000"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"{program.removesuffix('_service').removeprefix('meshkit.')}: "
        f"{var}=70000: must be an integer in 0..65535"
    ]
