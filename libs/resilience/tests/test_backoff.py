from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resilience import PolicyError, WaitFixed, WaitFullJitter
from resilience.testing import ScriptedRng

unit = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)


@given(
    initial=st.floats(min_value=0.001, max_value=10),
    extra=st.floats(min_value=0, max_value=100),
    multiplier=st.floats(min_value=1, max_value=10),
    n=st.integers(min_value=1, max_value=10_000),
    r=unit,
)
def test_full_jitter_stays_within_zero_and_the_capped_exponential(
    initial: float, extra: float, multiplier: float, n: int, r: float
) -> None:
    maximum = min(initial + extra, 3600)
    wait = WaitFullJitter(initial=initial, maximum=maximum, multiplier=multiplier)
    delay = wait(n, ScriptedRng([r]))
    log_bound = math.log(initial) + (n - 1) * math.log(multiplier)
    bound = maximum if log_bound >= math.log(maximum) else math.exp(log_bound)
    assert 0 <= delay <= bound * (1 + 1e-9) <= maximum * (1 + 1e-9)


@given(n=st.integers(min_value=1, max_value=50))
def test_full_jitter_cap_never_decreases(n: int) -> None:
    wait = WaitFullJitter(initial=0.05, maximum=2.0, multiplier=1.7)
    assert wait.cap(n) <= wait.cap(n + 1)


def test_full_jitter_uses_the_injected_rng() -> None:
    wait = WaitFullJitter(initial=0.1, maximum=1.0, multiplier=2)
    assert wait(1, ScriptedRng([0.5])) == pytest.approx(0.05)
    assert wait(3, ScriptedRng([0.5])) == pytest.approx(0.2)
    assert wait(10, ScriptedRng([0.5])) == pytest.approx(0.5)


def test_waits_add() -> None:
    wait = WaitFixed(seconds=0.1) + WaitFullJitter(initial=0.2, maximum=0.2, multiplier=1)
    assert wait(1, ScriptedRng([0.5])) == pytest.approx(0.2)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"initial": 0, "maximum": 1, "multiplier": 2}, "initialBackoff"),
        ({"initial": 2, "maximum": 1, "multiplier": 2}, "maxBackoff"),
        ({"initial": 0.1, "maximum": 1, "multiplier": 0.5}, "backoffMultiplier"),
    ],
)
def test_bad_backoff_is_refused_naming_the_field(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(PolicyError, match=field):
        WaitFullJitter(**kwargs)
