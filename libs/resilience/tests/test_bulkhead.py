from __future__ import annotations

import threading

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


def test_never_admits_more_than_the_limit_across_threads() -> None:
    bulkhead = Bulkhead(BulkheadOptions(max_concurrent_calls=3))
    inside = peak = 0
    count = threading.Lock()  # guards the test's own tally, not the bulkhead
    start = threading.Barrier(8)

    def work() -> None:
        nonlocal inside, peak
        start.wait()
        for _ in range(2000):
            if bulkhead.try_acquire():
                with count:
                    inside += 1
                    peak = max(peak, inside)
                with count:
                    inside -= 1
                bulkhead.release()

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak <= 3
    assert bulkhead.in_flight == 0


def test_limit_must_be_positive() -> None:
    with pytest.raises(
        PolicyError, match=r"maxConcurrentCalls: must be an integer in \[1, 100000\], got 0"
    ):
        BulkheadOptions(max_concurrent_calls=0)
