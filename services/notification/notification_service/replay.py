"""Dead letters back onto the order events stream, once the cause is fixed.

Each goes back as the entry it was (same event_id) in one script that also deletes it, so a
replay is safe to repeat or run twice at once: the consumers' idempotency turns an event that
was notified after all into a duplicate. Only the dead letters present when the replay starts
are moved; one that fails again comes back as a new dead letter, for the next replay.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshkit import redis_client

from .stream import EventStream

BATCH = 100


@dataclass(frozen=True, slots=True)
class ReplayReport:
    stream: str
    replayed: int
    #: Dead letters that held no event (trimmed from the stream before they died), deleted.
    dropped: int

    def summary(self) -> str:
        text = f"replayed {self.replayed} dead letters onto {self.stream}"
        if self.dropped:
            text += f"; dropped {self.dropped} that held no event (trimmed before they died)"
        return text


def replay(stream: EventStream, *, limit: int | None = None) -> ReplayReport:
    newest = stream.newest_dead_letter()
    replayed = dropped = 0
    while newest is not None and (limit is None or replayed + dropped < limit):
        want = BATCH if limit is None else min(BATCH, limit - replayed - dropped)
        ids = stream.dead_letter_ids(until=newest, count=want)
        if not ids:
            break
        for dead_id in ids:
            result = stream.replay(dead_id)
            if result == -1:
                dropped += 1
            elif result != 0:
                replayed += 1
    return ReplayReport(stream.stream, replayed, dropped)


def replay_dead_letters(redis_url: str, *, limit: int | None = None) -> ReplayReport:
    client = redis_client.connect(redis_url)
    try:
        return replay(EventStream(client), limit=limit)
    finally:
        client.close()
