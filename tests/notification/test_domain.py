"""Pure rules: when an event is given up on, and what a customer reads."""

from __future__ import annotations

import pytest

from notification_service.domain import DeliveryPolicy, message

from .conftest import order_event


def test_a_failure_gives_up_on_the_kth_delivery_and_a_silent_redelivery_past_it() -> None:
    policy = DeliveryPolicy(max_deliveries=3)
    assert [policy.gives_up_after_failure(n) for n in (1, 2, 3, 4)] == [False, False, True, True]
    assert [policy.gives_up_before_processing(n) for n in (3, 4)] == [False, True]


def test_one_delivery_allowed_gives_up_on_the_first_failure() -> None:
    assert DeliveryPolicy(max_deliveries=1).gives_up_after_failure(1)


def test_max_deliveries_is_checked_at_construction() -> None:
    with pytest.raises(ValueError, match="max_deliveries"):
        DeliveryPolicy(max_deliveries=0)


def test_the_message_says_how_the_order_ended() -> None:
    confirmed = order_event(order_id="ord_1")
    failed = order_event(order_id="ord_2", failed=True, reason="out of stock: SKU-0001")
    assert message(confirmed) == "Your order ord_1 is confirmed."
    assert message(failed) == "Your order ord_2 failed: out of stock: SKU-0001."
