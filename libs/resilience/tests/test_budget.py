from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resilience import PolicyError, RetryBudget, ThrottleOptions


def test_retries_stop_once_tokens_reach_half() -> None:
    budget = RetryBudget(ThrottleOptions(max_tokens=10, token_ratio=0.1))
    allowed = []
    for _ in range(8):
        budget.on_failure()
        allowed.append(budget.allows_retry())
    # 9, 8, 7, 6 > 5 allow; 5 and below do not (gRFC A6: "<= max/2" means no retries).
    assert allowed == [True, True, True, True, False, False, False, False]


def test_successes_refill_by_token_ratio_up_to_max() -> None:
    budget = RetryBudget(ThrottleOptions(max_tokens=4, token_ratio=0.5))
    for _ in range(4):
        budget.on_failure()
    assert budget.tokens == 0
    assert not budget.allows_retry()
    for _ in range(5):
        budget.on_success()
    assert budget.tokens == pytest.approx(2.5)
    assert budget.allows_retry()
    for _ in range(100):
        budget.on_success()
    assert budget.tokens == 4


def test_ratio_accounting_does_not_drift() -> None:
    budget = RetryBudget(ThrottleOptions(max_tokens=10, token_ratio=0.1))
    for _ in range(10):
        budget.on_failure()
    for _ in range(30):
        budget.on_success()
    assert budget.tokens == 3.0  # exactly: thousandths, not floats


@given(st.lists(st.booleans(), max_size=200))
def test_tokens_stay_within_zero_and_max(outcomes: list[bool]) -> None:
    budget = RetryBudget(ThrottleOptions(max_tokens=7, token_ratio=0.3))
    for ok in outcomes:
        budget.on_success() if ok else budget.on_failure()
        assert 0 <= budget.tokens <= 7
        assert budget.allows_retry() == (budget.tokens > 3.5)


@pytest.mark.parametrize(
    ("kwargs", "field"), [({"max_tokens": 0}, "maxTokens"), ({"token_ratio": 2}, "tokenRatio")]
)
def test_bad_throttle_is_refused(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(PolicyError, match=field):
        ThrottleOptions(**kwargs)
