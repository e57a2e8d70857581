"""The consumer group against a real Redis: idempotency, shared work, claims of what a dead
consumer held, dead letters, replay after the fix, and Redis going away."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis
from prometheus_client import CollectorRegistry

from mesh.order.v1 import order_pb2
from meshkit.order_events import STREAM
from meshkit.testing import redis_server, wait_until
from notification_service import metric_names as m
from notification_service.config import Settings
from notification_service.consumers import (
    Consumer,
    ConsumerOptions,
    Process,
    Processed,
    StoreNotifications,
)
from notification_service.domain import DeliveryPolicy
from notification_service.metrics import ConsumerMetrics
from notification_service.replay import replay
from notification_service.store import NotificationStore
from notification_service.stream import DEAD_LETTERS, GROUP, EventStream, Fields

from .conftest import Notifications, Start, metric, order_event


def _dead_letters(client: redis.Redis) -> list[dict[bytes, bytes]]:
    return [fields for _, fields in client.xrange(DEAD_LETTERS)]  # type: ignore[union-attr]


def test_the_same_event_published_twice_makes_one_notification(
    notifications: Notifications,
) -> None:
    event = order_event()
    duplicates = metric(m.DUPLICATES)
    notifications.publish(event)
    notifications.publish(event)  # a relay republishing after a crash: same event_id

    notifications.wait_settled()

    (only,) = notifications.listed()
    assert (only.event_id, only.order_id) == (event.event_id, event.order_id)
    assert only.status == order_pb2.ORDER_STATUS_CONFIRMED
    assert (only.total.currency_code, only.total.amount_minor) == ("USD", 1999)
    assert metric(m.DUPLICATES) - duplicates == 1


def test_a_failed_order_is_notified_with_its_status_and_reason(
    notifications: Notifications,
) -> None:
    event = order_event(failed=True, total_units=None, total_currency=None)
    notifications.publish(event)
    notifications.wait_settled()

    (only,) = notifications.listed()
    assert only.status == order_pb2.ORDER_STATUS_FAILED
    assert only.reason == event.reason
    assert not only.HasField("total")
    assert event.reason in only.message


def test_several_consumers_share_the_work_and_each_event_is_notified_once(start: Start) -> None:
    seen: Counter[str] = Counter()

    def watched(real: Process) -> Process:
        def process(fields: Fields) -> Processed:
            seen[threading.current_thread().name] += 1
            return real(fields)

        return process

    notifications = start(wrap=watched, consumers=3, batch=1)
    events = [order_event() for _ in range(60)]
    for event in events:
        notifications.publish(event)

    notifications.wait_settled()

    listed = notifications.listed()
    assert sorted(n.event_id for n in listed) == sorted(e.event_id for e in events)
    assert sum(seen.values()) == 60
    assert len(seen) > 1, seen


def test_entries_a_dead_consumer_held_are_claimed_by_a_live_one_and_notified_once(
    start: Start, redis_url: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    stream = EventStream(client)
    stream.ensure_group()
    events = [order_event() for _ in range(5)]
    for event in events:
        client.xadd(STREAM, event.to_fields())  # type: ignore[arg-type]
    # A consumer that read them and died before acknowledging (as kill -9 would leave it).
    given = client.xreadgroup(GROUP, "crashed-0", {STREAM: ">"}, count=10)
    assert len(given[0][1]) == 5  # type: ignore[index]
    claimed = metric(m.CLAIMED)

    notifications = start(batch=2)  # a claim scan takes them over two at a time
    notifications.wait_settled()

    assert sorted(n.event_id for n in notifications.listed()) == sorted(e.event_id for e in events)
    assert metric(m.CLAIMED) - claimed == 5
    assert client.xpending(STREAM, GROUP)["pending"] == 0
    client.close()


def test_a_restarted_consumer_reads_back_its_own_pending_entries(
    start: Start, base_settings: Settings
) -> None:
    client = redis.Redis.from_url(base_settings.redis_url)
    EventStream(client).ensure_group()
    event = order_event()
    client.xadd(STREAM, event.to_fields())  # type: ignore[arg-type]
    # What this program's first consumer had been given when it was killed.
    (name,) = base_settings.consumer_names()[:1]
    client.xreadgroup(GROUP, name, {STREAM: ">"}, count=1)

    # A claim idle time of an hour: only the read-back can bring the entry to the restart.
    notifications = start(claim_idle_ms=3_600_000)
    notifications.wait_settled()

    assert [n.event_id for n in notifications.listed()] == [event.event_id]
    client.close()


def test_a_poison_entry_is_dead_lettered_after_k_deliveries_while_others_flow(
    notifications: Notifications,
) -> None:
    dead = metric(m.DEAD_LETTERED, cause=m.CAUSE_FAILED)
    good = [order_event() for _ in range(3)]
    notifications.publish(good[0])
    poison = {**order_event().to_fields(), "type": "order.shipped"}
    poison_id = notifications.publish(poison)
    for event in good[1:]:
        notifications.publish(event)

    notifications.wait_settled()

    assert sorted(n.event_id for n in notifications.listed()) == sorted(e.event_id for e in good)
    (letter,) = _dead_letters(notifications.redis)
    assert letter[b"type"] == b"order.shipped"
    assert letter[b"event_id"] == poison["event_id"].encode()
    assert b"type must be one of" in letter[b"dead_reason"]
    assert letter[b"dead_deliveries"] == str(notifications.settings.max_deliveries).encode()
    assert letter[b"dead_entry_id"] == poison_id
    assert metric(m.DEAD_LETTERED, cause=m.CAUSE_FAILED) - dead == 1


def test_an_entry_delivered_more_than_k_times_unacknowledged_is_dead_lettered_unprocessed(
    start: Start, redis_url: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    EventStream(client).ensure_group()
    event = order_event()
    entry_id = client.xadd(STREAM, event.to_fields())  # type: ignore[arg-type]
    client.xreadgroup(GROUP, "crashed-0", {STREAM: ">"}, count=1)
    for n in range(1, 3):  # each consumer that took it died too: 3 deliveries, no ack
        client.xclaim(STREAM, GROUP, f"crashed-{n}", 0, [entry_id])

    notifications = start()  # its claim is the 4th delivery, past max_deliveries=3
    notifications.wait_settled()

    assert notifications.listed() == []
    (letter,) = _dead_letters(client)
    assert letter[b"dead_deliveries"] == b"4"
    assert b"without being acknowledged" in letter[b"dead_reason"]
    client.close()


def test_replay_after_the_fix_notifies_a_dead_letter_once(start: Start) -> None:
    event = order_event()

    def buggy(real: Process) -> Process:
        def process(fields: Fields) -> Processed:
            if fields[b"order_id"] == event.order_id.encode():
                raise RuntimeError("template for this order is broken")
            return real(fields)

        return process

    broken = start(wrap=buggy)
    broken.publish(event)
    wait_until(lambda: len(_dead_letters(broken.redis)) == 1, timeout_s=10, what="a dead letter")
    broken.wait_settled()
    broken.running.stop()
    (letter,) = _dead_letters(broken.redis)
    assert letter[b"dead_reason"] == b"RuntimeError: template for this order is broken"

    fixed = start(data_dir=broken.settings.data_dir)
    command = [sys.executable, "-m", "notification_service", "replay-dead-letters"]
    env = {"REDIS_URL": fixed.settings.redis_url, "DATA_DIR": str(fixed.settings.data_dir)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30, check=True)
    assert done.stdout.strip() == f"replayed 1 dead letters onto {STREAM}"

    fixed.wait_settled()
    assert [n.event_id for n in fixed.listed()] == [event.event_id]
    assert _dead_letters(fixed.redis) == []
    # Replayed again (say the command ran twice): nothing left to move, still one notification.
    fixed.publish(event)
    assert replay(EventStream(fixed.redis)).replayed == 0
    fixed.wait_settled()
    assert len(fixed.listed()) == 1


def test_consumers_back_off_while_redis_is_down_and_resume_on_a_new_one(start: Start) -> None:
    with redis_server() as first:
        port = first.port
        notifications = start(redis_url=first.url)
        before = order_event()
        notifications.redis = first.client()
        notifications.publish(before)
        notifications.wait_settled()
    errors = metric(m.REDIS_ERRORS)
    wait_until(lambda: metric(m.REDIS_ERRORS) > errors, timeout_s=10, what="a failed read")
    # The same address again, empty (no persistence): the group is gone and is made again.
    with redis_server(port) as second:
        notifications.redis = second.client()
        after = order_event()
        notifications.publish(after)
        notifications.wait_settled(timeout_s=15)
        listed = {n.event_id for n in notifications.listed()}
        assert listed == {before.event_id, after.event_id}
        notifications.running.stop()


class _Batches:
    """One consumer driven round by round (no thread) over a real store and Redis, counting
    the store's transactions and the XACKs Redis answered."""

    def __init__(self, redis_url: str, db: Path) -> None:
        self.client = redis.Redis.from_url(redis_url)
        self.store = NotificationStore(db)
        self.transactions = 0
        self.registry = CollectorRegistry()
        self.consumer = Consumer(
            EventStream(self.client),
            "batcher-0",
            StoreNotifications(self.store),
            # An hour's claim idle time: a failed entry stays pending, as its first failure left it.
            options=ConsumerOptions(
                count=16, claim_idle_ms=3_600_000, policy=DeliveryPolicy(max_deliveries=3)
            ),
            metrics=ConsumerMetrics(self.registry),
            stopping=threading.Event(),
            together=self._together,
        )

    @contextmanager
    def _together(self) -> Iterator[None]:
        with self.store.together():
            yield
        self.transactions += 1  # committed

    def xacks(self) -> int:
        stats = self.client.info("commandstats").get("cmdstat_xack", {})
        return int(stats.get("calls", 0))

    def rounds(self) -> None:
        """The first round (group made, own pending read back: none), then one read."""
        self.consumer.step()
        self.consumer.step()

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    def close(self) -> None:
        self.store.close()
        self.client.close()


def test_one_read_is_stored_in_one_transaction_and_acknowledged_in_one_xack(
    redis_url: str, tmp_path: Path
) -> None:
    batches = _Batches(redis_url, tmp_path / "n.db")
    EventStream(batches.client).ensure_group()
    events = [order_event() for _ in range(15)]
    for event in [*events, events[0]]:  # the last one a republished duplicate
        batches.client.xadd(STREAM, event.to_fields())  # type: ignore[arg-type]
    xacks = batches.xacks()

    batches.rounds()

    assert batches.transactions == 1
    assert batches.xacks() - xacks == 1
    assert batches.client.xpending(STREAM, GROUP)["pending"] == 0
    stored = [batches.store.by_event(e.event_id) for e in events]
    assert all(n is not None for n in stored)
    assert batches.metric(m.STORED, type=events[0].type) == 15
    assert batches.metric(m.DUPLICATES) == 1
    batches.close()


def test_a_poison_entry_fails_alone_and_the_rest_of_its_batch_is_stored_and_acknowledged(
    redis_url: str, tmp_path: Path
) -> None:
    batches = _Batches(redis_url, tmp_path / "n.db")
    EventStream(batches.client).ensure_group()
    good = [order_event() for _ in range(6)]
    poison = {**order_event().to_fields(), "type": "order.shipped"}
    ids = [batches.client.xadd(STREAM, e.to_fields()) for e in good[:3]]  # type: ignore[arg-type]
    poison_id = batches.client.xadd(STREAM, poison)  # type: ignore[arg-type]
    ids += [batches.client.xadd(STREAM, e.to_fields()) for e in good[3:]]  # type: ignore[arg-type]

    batches.rounds()

    # The batch's transaction rolled back; each entry then went alone (one transaction each).
    assert batches.transactions == 0
    assert all(batches.store.by_event(e.event_id) is not None for e in good)
    assert batches.store.by_event(poison["event_id"]) is None
    (pending,) = batches.client.xpending_range(STREAM, GROUP, min="-", max="+", count=10)
    assert (pending["message_id"], pending["times_delivered"]) == (poison_id, 1)
    assert batches.metric(m.FAILURES) == 1
    assert batches.metric(m.STORED, type=good[0].type) == 6
    assert _dead_letters(batches.client) == []
    batches.close()
