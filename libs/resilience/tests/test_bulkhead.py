from __future__ import annotations

import pytest

from resilience import Bulkhead, BulkheadOptions, PolicyError


def test_rejects_over_the_limit_and_frees_on_release() -> None:
    bulkhead = Bulkhead(BulkheadOptions(max_concurrent_calls=2))
    assert bulkhead.try_acquire()
    assert bulkhead.try_acquire()
    assert not bulkhead.try_acquire()
    bulkhead.release()
    assert bulkhead.try_acquire()
    assert bulkhead.in_flight == 2


def test_limit_must_be_positive() -> None:
    with pytest.raises(
        PolicyError, match=r"maxConcurrentCalls: must be an integer in \[1, 100000\], got 0"
    ):
        BulkheadOptions(max_concurrent_calls=0)
