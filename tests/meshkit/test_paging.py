"""Page tokens are opaque, round-trip, and are rejected when forged or reused across filters;
whatever a client sends as a token is INVALID_ARGUMENT page_token, never a parser's exception."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshkit.errors import InvalidArgument, Validator
from meshkit.ids import SKU, new_id, resource_id
from meshkit.limits import MAX_CUSTOMER_ID_LENGTH, MAX_PAGE_TOKEN_LENGTH
from meshkit.paging import (
    DEFAULT_PAGE_SIZE,
    INT64_MAX,
    MAX_PAGE_SIZE,
    _filter_digest,
    check_page_size,
    cursor_int,
    cursor_str,
    decode_token,
    encode_token,
)

ORDER_ID = resource_id("ord")


def _b64(raw: bytes | str) -> str:
    return base64.urlsafe_b64encode(raw.encode() if isinstance(raw, str) else raw).decode()


def _token(cursor: Any, filter_key: str = "") -> str:
    """A token as a client could craft one: any JSON cursor, with a valid filter digest."""
    return _b64(json.dumps({"c": cursor, "f": _filter_digest(filter_key)}))


def _assert_refused(token: str, filter_key: str = "") -> InvalidArgument:
    with pytest.raises(InvalidArgument) as caught:
        decode_token(token, filter_key)
    assert [v.field for v in caught.value.violations] == ["page_token"]
    return caught.value


@given(
    cursor=st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=10), max_size=3),
    filter_key=st.text(max_size=20),
)
def test_round_trip_or_refuse_to_issue(cursor: dict[str, object], filter_key: str) -> None:
    try:
        token = encode_token(cursor, filter_key)
    except ValueError:
        return  # a cursor too big for a token is never issued
    assert len(token) <= MAX_PAGE_TOKEN_LENGTH
    assert decode_token(token, filter_key) == cursor


def test_the_largest_cursors_the_services_issue_fit_a_token() -> None:
    # ListOrders: the newest possible timestamp, an order id, the longest customer filter.
    encode_token({"t": INT64_MAX, "id": new_id("ord")}, "c" * MAX_CUSTOMER_ID_LENGTH)
    encode_token({"after": "S" * SKU.max_length})


@pytest.mark.parametrize("token", ["garbage", "!!!", "e30=", encode_token({"a": 1}, "other")])
def test_forged_or_foreign_tokens_are_invalid_argument(token: str) -> None:
    _assert_refused(token, "mine")


@pytest.mark.parametrize(
    "token",
    [
        _b64("[" * 2000),  # RecursionError in json, once
        _b64("[" * 150),  # as deep as fits the length limit
        _b64('{"c":' * 30 + "{}" + "}" * 30),
        "A" * 100_000,
        "e30=\n",
        "e30" + "=" * 5,
        "e30=" + "é",
        "e3+0",
        "e3/0",
        _b64(b"\xff\xfe{}"),
        _b64("NaN"),
        _b64('{"c":{},"f":NaN}'),
        _b64('{"c":{},"f":Infinity}'),
        _b64('{"c":[],"f":"x"}'),
        _b64('{"c":{},"f":1}'),
        _b64('{"c":{}}'),
        _b64('{"c":{},"f":"x","x":1}'),
        _b64("1" * 150),
        _b64('"' + "x" * 100 + '"'),
    ],
)
def test_malformed_tokens_are_invalid_argument(token: str) -> None:
    _assert_refused(token)


def test_a_token_over_the_limit_is_refused_by_its_length_naming_the_limit() -> None:
    error = _assert_refused("A" * (MAX_PAGE_TOKEN_LENGTH + 1))
    assert error.violations[0].description == (
        f"must be at most {MAX_PAGE_TOKEN_LENGTH} characters, got {MAX_PAGE_TOKEN_LENGTH + 1}"
    )


def _cursor_or_fields(token: str) -> dict[str, Any] | list[str]:
    try:
        return decode_token(token)
    except InvalidArgument as error:
        return [v.field for v in error.violations]


@given(st.text(max_size=400))
def test_any_text_is_a_cursor_or_invalid_argument(token: str) -> None:
    outcome = _cursor_or_fields(token)
    assert isinstance(outcome, dict) or outcome == ["page_token"]


@given(st.binary(max_size=190))
def test_any_bytes_in_base64_are_a_cursor_or_invalid_argument(raw: bytes) -> None:
    outcome = _cursor_or_fields(_b64(raw))
    assert isinstance(outcome, dict) or outcome == ["page_token"]


# --- cursor fields ------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, 1, 1_700_000_000_000_000, INT64_MAX])
def test_cursor_int_in_range(value: int) -> None:
    assert cursor_int(decode_token(_token({"t": value})), "t") == value


@pytest.mark.parametrize(
    "value", [10**30, INT64_MAX + 1, -1, -(2**63), True, 1.5, 1e300, "1", None, [1], {"x": 1}]
)
def test_cursor_int_out_of_range_or_of_another_type(value: object) -> None:
    cursor = decode_token(_token({"t": value}))
    with pytest.raises(InvalidArgument, match="page_token"):
        cursor_int(cursor, "t")


def test_cursor_int_missing() -> None:
    with pytest.raises(InvalidArgument, match="page_token"):
        cursor_int(decode_token(_token({})), "t")


def test_cursor_str_of_its_format() -> None:
    order_id = new_id("ord")
    assert cursor_str(decode_token(_token({"id": order_id})), "id", ORDER_ID) == order_id


@pytest.mark.parametrize(
    "value",
    [new_id("ord") + "\n", new_id("pay"), "ord_" + "0" * 31, "x" * 150, 1, None, ["ord_"]],
)
def test_cursor_str_of_another_format_or_type(value: object) -> None:
    cursor = decode_token(_token({"id": value}))
    with pytest.raises(InvalidArgument, match="page_token"):
        cursor_str(cursor, "id", ORDER_ID)


# --- page size ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "effective"), [(0, DEFAULT_PAGE_SIZE), (1, 1), (MAX_PAGE_SIZE, MAX_PAGE_SIZE)]
)
def test_page_size_in_range(size: int, effective: int) -> None:
    validator = Validator()
    assert check_page_size(validator, size) == effective
    assert validator.ok


@pytest.mark.parametrize("size", [-1, MAX_PAGE_SIZE + 1, -(2**31), 2**31 - 1])
def test_page_size_out_of_range(size: int) -> None:
    validator = Validator()
    check_page_size(validator, size)
    with pytest.raises(InvalidArgument, match="page_size"):
        validator.raise_if_invalid()


def test_issued_tokens_use_the_url_safe_alphabet() -> None:
    token = encode_token({"after": "SKU-0001", "pad": "\xff\xfe>?"})
    assert re.fullmatch(r"[A-Za-z0-9_-]*={0,2}", token)
