"""Page tokens are opaque, round-trip, and are rejected when forged or reused across filters."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshkit.errors import InvalidArgument, Validator
from meshkit.paging import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    check_page_size,
    decode_token,
    encode_token,
)


@given(
    cursor=st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=10), max_size=3),
    filter_key=st.text(max_size=20),
)
def test_round_trip(cursor: dict[str, object], filter_key: str) -> None:
    assert decode_token(encode_token(cursor, filter_key), filter_key) == cursor


@pytest.mark.parametrize("token", ["garbage", "!!!", "e30=", encode_token({"a": 1}, "other")])
def test_forged_or_foreign_tokens_are_invalid_argument(token: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        decode_token(token, "mine")
    assert caught.value.violations[0].field == "page_token"


@pytest.mark.parametrize(
    ("size", "effective"), [(0, DEFAULT_PAGE_SIZE), (1, 1), (MAX_PAGE_SIZE, MAX_PAGE_SIZE)]
)
def test_page_size_in_range(size: int, effective: int) -> None:
    validator = Validator()
    assert check_page_size(validator, size) == effective
    assert validator.ok


@pytest.mark.parametrize("size", [-1, MAX_PAGE_SIZE + 1])
def test_page_size_out_of_range(size: int) -> None:
    validator = Validator()
    check_page_size(validator, size)
    with pytest.raises(InvalidArgument, match="page_size"):
        validator.raise_if_invalid()
