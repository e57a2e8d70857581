"""The consumer group's members: threads that read the order events stream, store each event's
notification and acknowledge it, take over what dead consumers left, and dead-letter poison.

One entry's life (K = NOTIFICATION_MAX_DELIVERIES, idle = NOTIFICATION_CLAIM_IDLE_MS)::

    XREADGROUP >   delivered to one consumer (delivery 1), pending in its name
    processed      notification stored (or found stored: a redelivery) -> XACK, done
    failed         left pending; after `idle` a live consumer claims it (XAUTOCLAIM,
                   delivery n + 1) and tries again; the K-th failure moves it to the
                   dead letters with the reason (XACK + XADD, one script)
    consumer died  left pending; claimed after `idle` like a failure; one delivered more
                   than K times that nobody acknowledged is dead-lettered unprocessed
                   (the process crash it causes would kill the next consumer too)

What one read (or claim) returns is processed together: one SQLite transaction for all its
entries, then one XACK of all their ids. When that transaction fails (a poison entry among
them), each entry is processed again on its own, so only the poison one fails and heads for the
dead letters, and the others are stored and acknowledged in the same round.

A restarted consumer has the same name (``<prefix>-<n>``), so it first reads back its own
pending entries (XREADGROUP from id 0) instead of waiting out the claim idle time. The store's
UNIQUE(event_id) makes every redelivery a no-op, and an entry is acknowledged only after the
notification's transaction has committed: at least once on the stream, once in the table.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Literal

import redis

import resilience
from meshkit import tracing
from meshkit.order_events import STREAM, MalformedEvent, OrderEvent

from . import metric_names as m
from .domain import DeliveryPolicy, notification, overdelivered_reason
from .metrics import ConsumerMetrics
from .store import NotificationStore
from .stream import EventStream, Fields

_log = logging.getLogger(__name__)

#: The longest a reason written into a dead letter may be (an exception can say a lot).
MAX_REASON_CHARS = 500
#: However long the claim idle time, the pending list is scanned at least this often.
MAX_CLAIM_INTERVAL_S = 5.0
#: XAUTOCLAIM calls (of NOTIFICATION_BATCH entries each) one claim scan makes at most.
MAX_CLAIM_BATCHES = 8
#: Redis down or failing: the consumers retry after 0.1 s, doubling to 5 s, with full jitter.
REDIS_BACKOFF = resilience.WaitFullJitter(initial=0.1, maximum=5.0, multiplier=2.0)

Outcome = Literal["stored", "duplicate"]


@dataclass(frozen=True, slots=True)
class Processed:
    event_type: str
    outcome: Outcome


#: What is done with one entry's fields: raises when the entry cannot be processed (poison).
Process = Callable[[Fields], Processed]
#: Makes the processing of every entry inside one unit: committed together when the block ends,
#: or none of it when it raises (the store's transaction). nullcontext: each on its own.
Together = Callable[[], AbstractContextManager[object]]
#: An entry to deliver: its id, fields, and its delivery count (None: ask Redis if it fails).
Delivery = tuple[bytes, Fields, int | None]

#: The span of one event's processing, in the order's trace (OTel's messaging conventions).
PROCESS_SPAN = f"process {STREAM}"
PROCESS_ATTRIBUTES = {
    "messaging.system": "redis",
    "messaging.destination.name": STREAM,
    "messaging.operation.type": "process",
}


class StoreNotifications:
    """The processing step: the entry as an order event, and its notification stored once."""

    def __init__(self, store: NotificationStore, *, clock: Callable[[], float] = time.time):
        self._store = store
        self._clock = clock

    def __call__(self, fields: Fields) -> Processed:
        event = OrderEvent.from_fields(fields)
        attributes = {**PROCESS_ATTRIBUTES, "messaging.message.id": event.event_id}
        with tracing.consumer_span(PROCESS_SPAN, event.traceparent, attributes):
            made = notification(event, stored_at_ms=int(self._clock() * 1000))
            stored = self._store.add(made)
        return Processed(event.type, "stored" if stored else "duplicate")


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsumerOptions:
    """How each consumer reads; checked at construction."""

    count: int = 16
    block_ms: int = 1000
    claim_idle_ms: int = 30_000
    policy: DeliveryPolicy = field(default_factory=lambda: DeliveryPolicy(max_deliveries=5))
    backoff: resilience.Wait = REDIS_BACKOFF

    def __post_init__(self) -> None:
        for name in ("count", "block_ms", "claim_idle_ms"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def claim_interval_s(self) -> float:
        """Half the idle time: an entry is claimed at most 1.5 idle times after its delivery
        (plus one blocked read, which the scan waits behind)."""
        return min(self.claim_idle_ms / 2000, MAX_CLAIM_INTERVAL_S)


def reason_of(error: Exception) -> str:
    text = str(error) if isinstance(error, MalformedEvent) else f"{type(error).__name__}: {error}"
    return text[:MAX_REASON_CHARS]


class Consumer:
    """One member of the group; :meth:`step` is one round (claim scan when due, one read)."""

    def __init__(
        self,
        stream: EventStream,
        name: str,
        process: Process,
        *,
        options: ConsumerOptions,
        metrics: ConsumerMetrics,
        stopping: threading.Event,
        together: Together = nullcontext,
        monotonic: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self._stream = stream
        self._process = process
        self._together = together
        self._options = options
        self._metrics = metrics
        self._stopping = stopping
        self._monotonic = monotonic
        self._rng = rng or random.Random()
        self._group_ready = False
        #: Where the read-back of this name's own pending entries is; None once it is done.
        self._backlog: bytes | None = b"0"
        self._claim_start = b"0-0"
        self._next_claim = 0.0

    def run(self) -> None:
        """Rounds until ``stopping`` is set; Redis errors back off and never end the loop."""
        with tracing.background():  # a poll is no trace; an event's work joins its order's
            self._rounds()

    def _rounds(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                self.step()
            except redis.RedisError as error:
                failures += 1
                self._metrics.redis_error()
                if "NOGROUP" in str(error):  # Redis lost the group (restarted without data)
                    self._group_ready = False
                    self._backlog = b"0"
                    continue
                if failures == 1:
                    _log.warning("consumer %s: Redis failed (%s); backing off", self.name, error)
                self._stopping.wait(self._options.backoff(failures, self._rng))
                continue
            if failures:
                _log.info("consumer %s: Redis answers again after %d failures", self.name, failures)
                failures = 0

    def step(self) -> None:
        if not self._group_ready:
            self._stream.ensure_group()
            self._group_ready = True
        now = self._monotonic()
        if now >= self._next_claim:
            self._next_claim = now + self._options.claim_interval_s
            self._claim()
        if self._backlog is not None:
            own = self._stream.read(
                self.name, start=self._backlog, count=self._options.count, block_ms=0
            )
            if not own:
                self._backlog = None
                return
            self._backlog = own[-1][0]
            self._deliver_all([(entry_id, fields, None) for entry_id, fields in own])
            return
        entries = self._stream.read(
            self.name, start=">", count=self._options.count, block_ms=self._options.block_ms
        )
        self._deliver_all([(entry_id, fields, 1) for entry_id, fields in entries])

    def _claim(self) -> None:
        """Takes over idle entries, a batch at a time, until the scan of the pending list
        goes round (or MAX_CLAIM_BATCHES: a long list is finished in later rounds, so that
        new entries keep being read meanwhile)."""
        for _ in range(MAX_CLAIM_BATCHES):
            claimed = self._stream.claim(
                self.name,
                min_idle_ms=self._options.claim_idle_ms,
                start=self._claim_start,
                count=self._options.count,
            )
            self._claim_start = claimed.next_start
            if claimed.entries:
                self._metrics.claimed(len(claimed.entries))
                _log.info("consumer %s claimed %d idle entries", self.name, len(claimed.entries))
            retried: list[Delivery] = []
            for entry_id, fields, deliveries in claimed.entries:
                if self._options.policy.gives_up_before_processing(deliveries):
                    reason = overdelivered_reason(deliveries)
                    self._dead_letter(entry_id, fields, reason, deliveries, m.CAUSE_OVERDELIVERED)
                else:
                    retried.append((entry_id, fields, deliveries))
            self._deliver_all(retried)
            if claimed.next_start == b"0-0" or self._stopping.is_set():
                break
        info = self._stream.info()
        if info is not None:
            self._metrics.group(info)

    def _deliver_all(self, entries: Sequence[Delivery]) -> None:
        """One transaction and one XACK for them all; one at a time if that transaction fails."""
        if len(entries) <= 1:
            for entry_id, fields, deliveries in entries:
                self._deliver(entry_id, fields, deliveries=deliveries)
            return
        try:
            with self._together():
                done = [self._process(fields) for _, fields, _ in entries]
        except Exception as error:  # whatever broke it, each entry tells alone
            _log.info(
                "consumer %s: a batch of %d failed (%s); processing each on its own",
                self.name,
                len(entries),
                reason_of(error),
            )
            for entry_id, fields, deliveries in entries:
                self._deliver(entry_id, fields, deliveries=deliveries)
            return
        self._stream.ack(*(entry_id for entry_id, _, _ in entries))
        for processed in done:
            self._count(processed)

    def _deliver(self, entry_id: bytes, fields: Fields, *, deliveries: int | None) -> None:
        try:
            processed = self._process(fields)
        except Exception as error:  # a poison entry must not stop the others
            self._failed(entry_id, fields, reason_of(error), deliveries)
            return
        self._stream.ack(entry_id)
        self._count(processed)

    def _count(self, processed: Processed) -> None:
        if processed.outcome == "stored":
            self._metrics.stored(processed.event_type)
        else:
            self._metrics.duplicate()

    def _failed(self, entry_id: bytes, fields: Fields, reason: str, deliveries: int | None) -> None:
        self._metrics.failed()
        count = self._stream.deliveries(entry_id) if deliveries is None else deliveries
        if count == 0:  # acknowledged or moved by another consumer meanwhile
            return
        if self._options.policy.gives_up_after_failure(count):
            self._dead_letter(entry_id, fields, reason, count, m.CAUSE_FAILED)
            return
        _log.warning(
            "consumer %s: entry %s failed on delivery %d of %d (retried after %d ms): %s",
            self.name,
            entry_id.decode(),
            count,
            self._options.policy.max_deliveries,
            self._options.claim_idle_ms,
            reason,
        )

    def _dead_letter(
        self, entry_id: bytes, fields: Fields, reason: str, deliveries: int, cause: str
    ) -> None:
        moved = self._stream.dead_letter(
            entry_id, fields, reason=reason, deliveries=deliveries, consumer=self.name
        )
        if moved:
            self._metrics.dead_lettered(cause)
            _log.warning(
                "consumer %s: entry %s moved to %s after %d deliveries: %s",
                self.name,
                entry_id.decode(),
                self._stream.dead_letters,
                deliveries,
                reason,
            )


class ConsumerGroup:
    """This process's consumers, one thread each."""

    def __init__(
        self,
        stream: EventStream,
        names: Sequence[str],
        process: Process,
        *,
        options: ConsumerOptions,
        metrics: ConsumerMetrics,
        together: Together = nullcontext,
    ) -> None:
        self._stopping = threading.Event()
        self._options = options
        self.consumers = [
            Consumer(
                stream,
                name,
                process,
                options=options,
                metrics=metrics,
                stopping=self._stopping,
                together=together,
            )
            for name in names
        ]
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for consumer in self.consumers:
            thread = threading.Thread(
                target=consumer.run, name=f"consumer {consumer.name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Lets each consumer finish its round (at most one blocked read) and waits for it."""
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=self._options.block_ms / 1000 + 5)
        self._threads.clear()
