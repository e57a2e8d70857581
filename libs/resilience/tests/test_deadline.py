from __future__ import annotations

import pytest

from resilience import deadline_scope, remaining_time
from resilience._deadline import (
    NO_DEADLINE_THRESHOLD,
    deadline_from_remaining,
    get_inbound_deadline,
)
from resilience.testing import FakeClock


def test_no_inbound_deadline_huge_time_remaining_means_none() -> None:
    clock = FakeClock()
    assert deadline_from_remaining(9.2e18, clock) is None  # grpc#26236: no deadline at all
    assert deadline_from_remaining(None, clock) is None
    assert deadline_from_remaining(NO_DEADLINE_THRESHOLD - 1, clock) is not None


def test_remaining_becomes_an_absolute_deadline_on_the_clock() -> None:
    clock = FakeClock(start=50)
    assert deadline_from_remaining(2.5, clock) == 52.5
    assert deadline_from_remaining(-1, clock) == 50  # already spent


def test_scopes_nest_and_only_shorten() -> None:
    clock = FakeClock(start=0)
    assert get_inbound_deadline() is None
    with deadline_scope(5, clock):
        with deadline_scope(10, clock):
            assert remaining_time(clock) == 5
        with deadline_scope(1, clock):
            assert remaining_time(clock) == 1
        clock.advance(2)
        assert remaining_time(clock) == pytest.approx(3)
    assert remaining_time(clock) is None
