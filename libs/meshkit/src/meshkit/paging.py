"""Opaque page tokens (AIP-158): base64 of a small JSON cursor bound to the request's filter.

Tokens come back from clients, so they are parsed strictly: a bounded length before any
decoding, the URL-safe base64 alphabet only, a JSON object of exactly the expected keys, and
cursor values checked for type and range by :func:`cursor_int` / :func:`cursor_str`. Whatever
else a client sends is INVALID_ARGUMENT ``page_token``, never an exception from a parser.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from typing import Any, NoReturn

from meshkit.errors import InvalidArgument, Validator
from meshkit.ids import IdFormat
from meshkit.limits import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, MAX_PAGE_TOKEN_LENGTH

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "INT64_MAX",
    "MAX_PAGE_SIZE",
    "check_page_size",
    "cursor_int",
    "cursor_str",
    "decode_token",
    "encode_token",
]

INT64_MAX = 2**63 - 1

_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]*={0,2}")
_NOT_ISSUED = "is not a token this service issued"


def check_page_size(validator: Validator, page_size: int, field: str = "page_size") -> int:
    """Validates a page size and returns the effective one (0 means the default)."""
    validator.check(
        0 <= page_size <= MAX_PAGE_SIZE,
        field,
        f"must be between 0 and {MAX_PAGE_SIZE} (0 means {DEFAULT_PAGE_SIZE}), got {page_size}",
    )
    return page_size or DEFAULT_PAGE_SIZE


def _filter_digest(filter_key: str) -> str:
    return hashlib.sha256(filter_key.encode()).hexdigest()[:12]


def encode_token(cursor: dict[str, Any], filter_key: str = "") -> str:
    """The token for ``cursor``; one :func:`decode_token` would refuse is a bug, so it raises."""
    payload = {"c": cursor, "f": _filter_digest(filter_key)}
    token = base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode()
    if len(token) > MAX_PAGE_TOKEN_LENGTH:
        raise ValueError(f"a {len(token)}-character token is over MAX_PAGE_TOKEN_LENGTH")
    return token


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def decode_token(token: str, filter_key: str = "", field: str = "page_token") -> dict[str, Any]:
    """Returns the cursor; a token that is malformed or from another filter is INVALID_ARGUMENT."""
    if len(token) > MAX_PAGE_TOKEN_LENGTH:
        raise InvalidArgument.field(
            field, f"must be at most {MAX_PAGE_TOKEN_LENGTH} characters, got {len(token)}"
        )
    if _TOKEN_RE.fullmatch(token) is None:
        raise InvalidArgument.field(field, _NOT_ISSUED)
    try:
        raw = base64.urlsafe_b64decode(token)
        # The length bound keeps nesting far below the recursion limit; RecursionError is
        # caught all the same, so that no parser error can escape as INTERNAL.
        payload = json.loads(raw, parse_constant=_reject_constant)
    except (binascii.Error, ValueError, RecursionError):
        raise InvalidArgument.field(field, _NOT_ISSUED) from None
    if not isinstance(payload, dict) or payload.keys() != {"c", "f"}:
        raise InvalidArgument.field(field, _NOT_ISSUED)
    cursor, digest = payload["c"], payload["f"]
    if not isinstance(cursor, dict) or not isinstance(digest, str):
        raise InvalidArgument.field(field, _NOT_ISSUED)
    if digest != _filter_digest(filter_key):
        raise InvalidArgument.field(field, "belongs to a request with different filters")
    return cursor


def cursor_int(
    cursor: dict[str, Any],
    key: str,
    *,
    low: int = 0,
    high: int = INT64_MAX,
    field: str = "page_token",
) -> int:
    """``cursor[key]`` when it is an int in ``low..high`` (the range the store can take)."""
    value = cursor.get(key)
    # bool is an int to isinstance; no token of ours holds one.
    if type(value) is not int or not low <= value <= high:
        raise InvalidArgument.field(field, _NOT_ISSUED)
    return value


def cursor_str(
    cursor: dict[str, Any], key: str, id_format: IdFormat, *, field: str = "page_token"
) -> str:
    """``cursor[key]`` when it is a string of ``id_format``."""
    value = cursor.get(key)
    if not isinstance(value, str) or not id_format.matches(value):
        raise InvalidArgument.field(field, _NOT_ISSUED)
    return value
