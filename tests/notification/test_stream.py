"""The stream's scripts against a real Redis: a dead letter is made once, a replay is made once,
and a dead letter that holds no event is dropped rather than replayed as an empty entry."""

from __future__ import annotations

import redis

from meshkit.order_events import STREAM
from notification_service.stream import DEAD_LETTERS, GROUP, EventStream

from .conftest import order_event


def _stream(redis_url: str) -> tuple[EventStream, redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    stream = EventStream(client)
    stream.ensure_group()
    stream.ensure_group()  # a second start finds the group made: no error
    return stream, client


def test_an_entry_is_dead_lettered_once_and_acknowledged(redis_url: str) -> None:
    stream, client = _stream(redis_url)
    fields = order_event().to_fields()
    client.xadd(STREAM, fields)  # type: ignore[arg-type]
    ((entry_id, read),) = stream.read("c-0", start=">", count=1, block_ms=1)

    first = stream.dead_letter(entry_id, read, reason="boom", deliveries=5, consumer="c-0")
    second = stream.dead_letter(entry_id, read, reason="boom", deliveries=5, consumer="c-1")

    assert (first, second) == (True, False)
    ((_, letter),) = client.xrange(DEAD_LETTERS)  # type: ignore[misc]
    assert letter[b"event_id"] == fields["event_id"].encode()
    assert letter[b"dead_reason"] == b"boom"
    assert letter[b"dead_consumer"] == b"c-0"
    assert client.xpending(STREAM, GROUP)["pending"] == 0
    client.close()


def test_a_replay_puts_the_event_back_once_without_its_dead_letter_fields(redis_url: str) -> None:
    stream, client = _stream(redis_url)
    fields = order_event().to_fields()
    client.xadd(STREAM, fields)  # type: ignore[arg-type]
    ((entry_id, read),) = stream.read("c-0", start=">", count=1, block_ms=1)
    stream.dead_letter(entry_id, read, reason="boom", deliveries=5, consumer="c-0")
    ((dead_id, _),) = client.xrange(DEAD_LETTERS)  # type: ignore[misc]

    replayed = stream.replay(dead_id)

    assert isinstance(replayed, bytes)
    assert stream.replay(dead_id) == 0
    assert client.xlen(DEAD_LETTERS) == 0
    ((_, back),) = client.xrange(STREAM, min=replayed, max=replayed)  # type: ignore[misc]
    assert {k.decode(): v.decode() for k, v in back.items()} == fields
    client.close()


def test_a_dead_letter_of_an_entry_trimmed_before_it_died_is_dropped(redis_url: str) -> None:
    stream, client = _stream(redis_url)
    client.xadd(STREAM, order_event().to_fields())  # type: ignore[arg-type]
    ((entry_id, _),) = stream.read("c-0", start=">", count=1, block_ms=1)
    client.xtrim(STREAM, maxlen=0)
    ((_, trimmed),) = stream.read("c-0", start="0", count=1, block_ms=1)
    assert trimmed == {}
    stream.dead_letter(entry_id, trimmed, reason="gone", deliveries=5, consumer="c-0")
    ((dead_id, _),) = client.xrange(DEAD_LETTERS)  # type: ignore[misc]

    assert stream.replay(dead_id) == -1
    assert client.xlen(DEAD_LETTERS) == 0
    assert client.xlen(STREAM) == 0
    client.close()
