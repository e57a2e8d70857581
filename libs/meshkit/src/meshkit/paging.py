"""Opaque page tokens (AIP-158): base64 of a small JSON cursor bound to the request's filter."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

from meshkit.errors import InvalidArgument, Validator

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100


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
    payload = {"c": cursor, "f": _filter_digest(filter_key)}
    return base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode()


def decode_token(token: str, filter_key: str = "", field: str = "page_token") -> dict[str, Any]:
    """Returns the cursor; a token that is malformed or from another filter is INVALID_ARGUMENT."""
    try:
        payload = json.loads(base64.urlsafe_b64decode(token.encode()))
        cursor = payload["c"]
        digest = payload["f"]
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise InvalidArgument.field(field, "is not a token this service issued") from None
    if not isinstance(cursor, dict) or digest != _filter_digest(filter_key):
        raise InvalidArgument.field(field, "belongs to a request with different filters")
    return cursor
