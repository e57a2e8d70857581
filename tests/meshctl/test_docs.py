"""The README's settings table is the one the declarations print, and names every variable."""

from __future__ import annotations

import re
from pathlib import Path

from meshctl.config import REPO_ROOT
from meshctl.docs import BEGIN, END, declared, settings_table

README = REPO_ROOT / "README.md"


def _readme() -> str:
    return Path(README).read_text()


def test_the_readme_holds_the_table_the_code_declares() -> None:
    text = _readme()
    held = text[text.index(BEGIN) : text.index(END) + len(END)]
    assert held == settings_table(), (
        "README.md's settings table is out of date; replace it with `python -m meshctl settings`"
    )


def test_a_variable_read_by_two_programs_has_one_default() -> None:
    defaults: dict[str, set[str]] = {}
    for _, var in declared():
        defaults.setdefault(var.name, set()).add(var.default_text)
    assert {name: d for name, d in defaults.items() if len(d) > 1} == {}


def test_every_variable_the_ports_table_names_is_declared() -> None:
    text = _readme()
    ports = text[text.index("## Ports") : text.index(BEGIN)]
    named = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", ports))
    assert named, "the Ports section names no variable"
    assert named <= {var.name for _, var in declared()}
