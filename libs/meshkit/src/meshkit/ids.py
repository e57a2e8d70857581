"""Identifier formats shared by the services and their validators.

A value is checked for its length first, so one over its limit is refused by size alone
before any regex runs, and patterns only ever match whole strings (``fullmatch``: ``$`` would
let a trailing newline through).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from meshkit.errors import Validator, shown
from meshkit.limits import (
    MAX_CUSTOMER_ID_LENGTH,
    MAX_REQUEST_ID_LENGTH,
    MAX_RESOURCE_ID_LENGTH,
    MAX_SKU_LENGTH,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class IdFormat:
    """One kind of identifier: its whole-string pattern, its length limit, and how errors say
    what it must look like."""

    pattern: re.Pattern[str]
    max_length: int
    shape: str

    def matches(self, value: str) -> bool:
        return len(value) <= self.max_length and self.pattern.fullmatch(value) is not None

    def check(self, validator: Validator, value: str, field: str, *, required: bool = True) -> bool:
        """Adds at most one violation for ``field``; True when ``value`` may be used as given
        (well-formed, or empty and not required)."""
        if not value:
            return validator.check(not required, field, "is required")
        if len(value) > self.max_length:
            validator.add(field, f"must be at most {self.max_length} characters, got {len(value)}")
            return False
        return validator.check(
            self.pattern.fullmatch(value) is not None,
            field,
            f"must be {self.shape}, got {shown(value)}",
        )


#: AIP-155 request ids and customer ids: printable, no spaces, bounded.
REQUEST_ID = IdFormat(
    pattern=re.compile(rf"[A-Za-z0-9._:-]{{1,{MAX_REQUEST_ID_LENGTH}}}"),
    max_length=MAX_REQUEST_ID_LENGTH,
    shape=f"1-{MAX_REQUEST_ID_LENGTH} characters of [A-Za-z0-9._:-] (e.g. a UUID)",
)
CUSTOMER_ID = IdFormat(
    pattern=re.compile(rf"[A-Za-z0-9._-]{{1,{MAX_CUSTOMER_ID_LENGTH}}}"),
    max_length=MAX_CUSTOMER_ID_LENGTH,
    shape=f"1-{MAX_CUSTOMER_ID_LENGTH} characters of [A-Za-z0-9._-]",
)
SKU = IdFormat(
    pattern=re.compile(rf"[A-Z0-9-]{{1,{MAX_SKU_LENGTH}}}"),
    max_length=MAX_SKU_LENGTH,
    shape=f"1-{MAX_SKU_LENGTH} characters of [A-Z0-9-] (e.g. SKU-0001)",
)
REQUEST_ID_RE = REQUEST_ID.pattern
CUSTOMER_ID_RE = CUSTOMER_ID.pattern
SKU_RE = SKU.pattern


def new_id(prefix: str) -> str:
    """``<prefix>_<32 hex>``: unique without coordination, safe in URLs and logs."""
    return f"{prefix}_{uuid.uuid4().hex}"


def id_pattern(prefix: str) -> re.Pattern[str]:
    """The pattern of :func:`new_id`'s ids; use it with ``fullmatch``."""
    return re.compile(rf"{prefix}_[0-9a-f]{{32}}")


def resource_id(prefix: str) -> IdFormat:
    """The format of the ids a service issues with :func:`new_id`."""
    return IdFormat(
        pattern=id_pattern(prefix),
        max_length=MAX_RESOURCE_ID_LENGTH,
        shape=f"{prefix}_ followed by 32 hex digits",
    )
