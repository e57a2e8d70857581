"""Settings from the environment: one declaration per variable, checked at start-up.

A service's settings are a frozen dataclass whose fields are declared with a :class:`Var`
(``port: int = ORDER_PORT.field()``). :func:`from_env` reads every declared variable,
:func:`check_fields` (called from ``__post_init__``) checks values however they were built, and
a bad value is a :class:`SettingsError` naming the variable and what it allows;
:func:`load_or_exit` turns that into one line on stderr and exit code 2. The same declarations
list every variable with its default and meaning, which a test holds the README to.

Why not pydantic-settings: importing it (pydantic 2.14) added 25 MiB of RSS to a process here,
and the mesh runs six Python processes; what it would do for us fits in this module.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

T = TypeVar("T")
S = TypeVar("S")

_VAR = "meshkit.settings.var"


class SettingsError(ValueError):
    """A setting is malformed or out of range; start-up stops with this message."""


@dataclass(frozen=True, slots=True)
class Var(Generic[T]):
    """One environment variable: how to read it, what it allows, what it means."""

    name: str
    #: The default as it would be written in the environment (and in the README).
    default_text: str
    doc: str
    parse: Callable[[str], T]
    check: Callable[[T], bool]
    #: What ``check`` accepts, completing "must be ...".
    allowed: str

    @property
    def default(self) -> T:
        return self.parse(self.default_text)

    def read(self, env: Mapping[str, str]) -> T:
        """The variable's value from ``env`` (unset or empty: the default)."""
        raw = env.get(self.name) or self.default_text
        try:
            value = self.parse(raw.strip())
        except ValueError:
            raise SettingsError(f"{self.name}={raw!r}: must be {self.allowed}") from None
        self.validate(value)
        return value

    def validate(self, value: T) -> None:
        if not self.check(value):
            raise SettingsError(f"{self.name}={value!r}: must be {self.allowed}")

    def field(self) -> Any:
        """A dataclass field defaulting to this variable's default (Any: it stands for T)."""
        return dataclasses.field(default=self.default, metadata={_VAR: self})

    def required(self) -> Any:
        """A dataclass field with no default, read from this variable by :func:`from_env`."""
        return dataclasses.field(metadata={_VAR: self})


def integer(name: str, default: int, *, lo: int, hi: int, doc: str) -> Var[int]:
    return Var(name, str(default), doc, int, lambda v: lo <= v <= hi, f"an integer in {lo}..{hi}")


def number(name: str, default: float, *, lo: float, hi: float, doc: str) -> Var[float]:
    def finite(raw: str) -> float:
        value = float(raw)
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(raw)
        return value

    return Var(name, str(default), doc, finite, lambda v: lo <= v <= hi, f"a number in {lo}..{hi}")


def port(name: str, default: int, *, doc: str) -> Var[int]:
    return integer(name, default, lo=0, hi=65535, doc=doc)


def text(
    name: str,
    default: str,
    *,
    doc: str,
    check: Callable[[str], bool] = bool,
    allowed: str = "a non-empty string",
) -> Var[str]:
    return Var(name, default, doc, str, check, allowed)


def choice(name: str, default: str, options: Iterable[str], *, doc: str) -> Var[str]:
    allowed = tuple(options)
    return Var(name, default, doc, str, lambda v: v in allowed, "one of " + ", ".join(allowed))


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def flag(name: str, default: bool, *, doc: str) -> Var[bool]:
    def parse(raw: str) -> bool:
        lowered = raw.lower()
        if lowered not in _TRUE + _FALSE:
            raise ValueError(raw)
        return lowered in _TRUE

    return Var(name, "1" if default else "0", doc, parse, lambda _: True, "1 or 0 (true/false)")


def path(name: str, default: str, *, doc: str) -> Var[Path]:
    """A directory or file; relative paths are taken from the working directory at start-up."""
    return Var(name, default, doc, lambda raw: Path(raw).resolve(), lambda _: True, "a path")


def variables(cls: type) -> tuple[Var[Any], ...]:
    """Every variable a settings class declares, in field order."""
    return tuple(f.metadata[_VAR] for f in dataclasses.fields(cls) if _VAR in f.metadata)


def from_env(cls: type[S], env: Mapping[str, str], **given: Any) -> S:
    """``cls`` built from every variable it declares; ``given`` fields are taken as they are
    (values derived from several variables, such as a loaded certificate)."""
    values = {
        f.name: f.metadata[_VAR].read(env)
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]  # any settings dataclass
        if _VAR in f.metadata and f.name not in given
    }
    return cls(**values, **given)


def check_fields(settings: object) -> None:
    """Checks each declared field's value against its variable (None means "off")."""
    for f in dataclasses.fields(settings):  # type: ignore[arg-type]  # any settings dataclass
        var = f.metadata.get(_VAR)
        value = getattr(settings, f.name)
        if var is not None and value is not None:
            var.validate(value)


def load_or_exit(program: str, load: Callable[[], S]) -> S:
    """``load()``, or one line naming the bad variable on stderr and exit code 2."""
    try:
        return load()
    except SettingsError as error:
        print(f"{program}: {error}", file=sys.stderr)
        raise SystemExit(2) from None


# --- variables every service reads -------------------------------------------------------------

DEFAULT_HOST = "127.0.0.1"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

HOST = text("MESH_HOST", DEFAULT_HOST, doc="address every service binds")
DATA_DIR = path("DATA_DIR", "var/data", doc="where services keep their SQLite databases (WAL mode)")
REDIS_URL = text(
    "REDIS_URL",
    DEFAULT_REDIS_URL,
    doc="the Redis every service shares (caching, locks, idempotency)",
    check=lambda url: url.startswith(("redis://", "rediss://", "unix://")),
    allowed="a URL starting with redis://, rediss:// or unix://",
)
