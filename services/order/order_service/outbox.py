"""The outbox relay: publishes finished orders' events from the outbox table to the order
events stream (meshkit.order_events), in commit order.

The event is written in the SQLite transaction that finishes its order (store.OrderStore.save),
so it exists exactly when the order's end does; the relay copies it to Redis and deletes it
only once Redis has it. Whatever crashes when, no event is lost or invented:

    crash before the commit        no end, no event
    after the commit, before XADD  the row is still there: published after the restart
    after XADD, before the delete  published again after the restart, with the same event_id

So the stream may hold an event twice, never two different ids for one order's end: consumers
dedupe by ``event_id``. Two relays on one database file (the order service runs as one
process; a second one would) publish the same rows, again only duplicates with the same ids.

One thread per process, woken by the store after each commit (and polling every ``poll_s``
as a backstop: another process may have written the file); once woken it lingers a few
milliseconds, so the commits of a busy moment go out together. A batch is one round trip of
XADDs in a MULTI/EXEC and one SQLite delete. While Redis fails, the relay backs off (jittered, up to
a couple of seconds) with one WARNING per outage, and drains the backlog once Redis answers.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from meshkit import tracing
from meshkit.order_events import DEFAULT_MAXLEN, STREAM
from order_service.store import OrderStore
from resilience import Rng, Wait, WaitFixed, WaitFullJitter

_log = logging.getLogger(__name__)

#: Events per round trip: enough that a backlog drains in a few round trips.
DEFAULT_BATCH = 200
DEFAULT_POLL_S = 1.0
#: After a wake-up: at 150 orders/s, ~8 events per batch instead of one round trip and one
#: SQLite write each, for 50 ms more on the way to the stream.
DEFAULT_LINGER_S = 0.05
#: While Redis fails: a floor, so a dead Redis is not asked in a tight loop, plus full jitter
#: doubling to 2 s, so a Redis that is back is used again within about two seconds.
DEFAULT_BACKOFF: Wait = WaitFixed(seconds=0.05) + WaitFullJitter(
    initial=0.1, maximum=2.0, multiplier=2
)


@dataclass(frozen=True, slots=True)
class Backlog:
    """What waits in the outbox: how many events, and the oldest one's age."""

    pending: int
    oldest_age_s: float


class RelayListener:
    """What the relay reports; the metrics subscribe (order_service.metrics.OutboxMetrics)."""

    def published(self, count: int) -> None: ...
    def failed(self) -> None: ...
    def backlog(self, backlog: Backlog) -> None: ...


class Relay:
    """Copies the outbox to the stream: :meth:`drain` once, or a thread from :meth:`start`."""

    def __init__(
        self,
        store: OrderStore,
        client: redis.Redis,
        wakeup: threading.Event,
        *,
        maxlen: int = DEFAULT_MAXLEN,
        batch: int = DEFAULT_BATCH,
        poll_s: float = DEFAULT_POLL_S,
        linger_s: float = DEFAULT_LINGER_S,
        backoff: Wait = DEFAULT_BACKOFF,
        rng: Rng | None = None,
        listener: RelayListener | None = None,
        wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        if maxlen < 1:
            raise ValueError(f"maxlen must be >= 1, got {maxlen}")
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self._store = store
        self._redis = client
        self._wakeup = wakeup
        self._maxlen = maxlen
        self._batch = batch
        self._poll_s = poll_s
        self._linger_s = linger_s
        self._backoff = backoff
        self._rng = rng or random.Random()
        self._listener = listener or RelayListener()
        self._wall_ms = wall_ms
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def drain(self) -> int:
        """Publishes every event in the outbox, oldest first; returns how many. Raises redis
        errors: the events of the failed batch and after it stay in the outbox."""
        return self._drain()[0]

    def _drain(self) -> tuple[int, bool]:
        """How many it published, and whether its last look found the outbox empty."""
        sent = 0
        while not self._stop.is_set():
            rows = self._store.outbox(self._batch)
            if not rows:
                return sent, True
            # MULTI/EXEC: Redis serves a consumer blocked on the stream after the command that
            # fed it, so a plain pipeline's first XADD would wake it with one entry; after an
            # EXEC it reads the whole batch (one SQLite transaction and one XACK for it).
            pipe = self._redis.pipeline(transaction=True)
            for row in rows:
                # redis-py's FieldT is invariant in the mapping's types; a str dict is fine.
                pipe.xadd(STREAM, row.fields, maxlen=self._maxlen, approximate=True)  # type: ignore[arg-type]
            pipe.execute()
            # A crash here publishes these again after the restart, under the same ids.
            self._store.published([row.seq for row in rows])
            sent += len(rows)
            self._listener.published(len(rows))
            if len(rows) < self._batch:
                return sent, True
        return sent, False

    def backlog(self) -> Backlog:
        pending, oldest_ms = self._store.outbox_backlog()
        age_s = 0.0 if oldest_ms is None else max(0.0, (self._wall_ms() - oldest_ms) / 1000)
        return Backlog(pending, age_s)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="order-outbox-relay", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        with tracing.background():  # its polls and publishes are no traces of their own
            self._publish_until_stopped()

    def _publish_until_stopped(self) -> None:
        failures = 0
        while not self._stop.is_set():
            # Cleared before draining: a commit during the drain wakes the next round.
            self._wakeup.clear()
            wait_s = self._poll_s
            emptied = False
            try:
                _, emptied = self._drain()
            except redis.RedisError as error:
                failures += 1
                self._listener.failed()
                if failures == 1:  # one line per outage, not one per attempt
                    _log.warning("order events not published: redis unavailable (%s)", error)
                wait_s = self._backoff(failures, self._rng)
            except Exception:  # the loop must outlive a bad round (e.g. the database was busy)
                _log.exception("outbox relay round failed")
            else:
                if failures:
                    _log.info("order events published again after %d failed rounds", failures)
                failures = 0
            try:
                # Just found empty: no need to ask SQLite (the usual case, once per batch).
                self._listener.backlog(Backlog(0, 0.0) if emptied else self.backlog())
            except Exception:
                _log.exception("could not read the outbox backlog")
            if failures:
                self._stop.wait(wait_s)  # not woken by commits: they would defeat the backoff
            elif self._wakeup.wait(wait_s) and self._linger_s:
                self._stop.wait(self._linger_s)

    def stop(self) -> None:
        """Stops the thread after its current round; what is left is published at next start."""
        self._stop.set()
        self._wakeup.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
