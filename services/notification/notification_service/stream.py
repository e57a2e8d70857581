"""The order events stream as this service's consumer group sees it: read, acknowledge, claim,
dead-letter and replay. Redis I/O only; what an event means is the consumers' business.

Entries come back as redis-py returns them: ``(entry id, {field: value})`` in bytes. redis-py
8 types a stream reply as the union of every shape the command can answer; these calls get one
(bytes, no decode_responses), so raw replies are taken as Any.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis

from meshkit.order_events import DEFAULT_MAXLEN, STREAM

GROUP = "notification"
#: Same hash tag as the stream, so the scripts that touch both run on one Cluster slot.
DEAD_LETTERS = f"{STREAM}:dead"
#: What a dead letter adds to the original entry's fields (which it keeps as they were, so a
#: replay puts the very same event back). Original fields never start with this prefix.
DEAD_PREFIX = "dead_"
DEAD_REASON = "dead_reason"
DEAD_DELIVERIES = "dead_deliveries"
DEAD_ENTRY_ID = "dead_entry_id"
DEAD_CONSUMER = "dead_consumer"

Fields = Mapping[bytes, bytes]
Entry = tuple[bytes, Fields]

#: Moves one pending entry to the dead letters, once: only while the entry is still pending
#: (two consumers giving up on it at once make one dead letter), and the dead letter is written
#: before the entry is acknowledged (a script stopped by an error between them loses nothing).
#: KEYS[1] the stream, KEYS[2] the dead-letter stream
#: ARGV[1] the group, ARGV[2] the entry id, ARGV[3] the dead letters' MAXLEN (~),
#: ARGV[4..] field, value, ... of the dead letter
#: Returns 1 when this call moved the entry, 0 when it was no longer pending.
DEAD_LETTER = """
if #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1) == 0 then
  return 0
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', unpack(ARGV, 4))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

#: Puts one dead letter back on the stream as the entry it was (its dead_* fields dropped), then
#: deletes it, in one step: two replays running at once put it back once.
#: KEYS[1] the dead-letter stream, KEYS[2] the stream
#: ARGV[1] the dead letter's id, ARGV[2] the stream's MAXLEN (~), ARGV[3] the dead_ prefix
#: Returns the new entry's id; 0 when the dead letter is gone (another replay took it); -1 when
#: it held no event fields (the entry had been trimmed from the stream before it died), and it
#: was deleted.
REPLAY = """
local found = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #found == 0 then
  return 0
end
local fields = found[1][2]
local original = {}
for i = 1, #fields, 2 do
  if string.sub(fields[i], 1, #ARGV[3]) ~= ARGV[3] then
    original[#original + 1] = fields[i]
    original[#original + 1] = fields[i + 1]
  end
end
if #original == 0 then
  redis.call('XDEL', KEYS[1], ARGV[1])
  return -1
end
local replayed = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(original))
redis.call('XDEL', KEYS[1], ARGV[1])
return replayed
"""


@dataclass(frozen=True, slots=True)
class Claimed:
    """What one XAUTOCLAIM took over: entries with their delivery counts, and where the next
    scan of the pending list starts ("0-0": it went round)."""

    entries: list[tuple[bytes, Fields, int]]
    next_start: bytes


@dataclass(frozen=True, slots=True)
class GroupInfo:
    #: Entries in the stream not yet delivered to the group (XINFO GROUPS ``lag``, Redis 7).
    lag: int | None
    #: Delivered and not acknowledged.
    pending: int


class EventStream:
    """The group's view of the stream through one client (thread-safe: a pool per client)."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        stream: str = STREAM,
        group: str = GROUP,
        dead_letters: str = DEAD_LETTERS,
        maxlen: int = DEFAULT_MAXLEN,
    ) -> None:
        self._client = client
        self.stream = stream
        self.group = group
        self.dead_letters = dead_letters
        self._maxlen = maxlen
        self._dead_letter = client.register_script(DEAD_LETTER)
        self._replay = client.register_script(REPLAY)

    def ensure_group(self) -> None:
        """Creates the group (and the stream) unless it exists. It starts at the stream's first
        entry, not its end: events written before this service ever ran are notified too."""
        try:
            self._client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    def read(self, consumer: str, *, start: bytes | str, count: int, block_ms: int) -> list[Entry]:
        """``start=">"``: new entries (waits up to ``block_ms``); an id: this consumer's own
        pending entries after it (what it was given before a restart), without waiting."""
        reply: Any = self._client.xreadgroup(
            self.group,
            consumer,
            {self.stream: start},
            count=count,
            block=block_ms if start == ">" else None,
        )
        if not reply:
            return []
        return [(entry_id, fields or {}) for entry_id, fields in reply[0][1]]

    def ack(self, *entry_ids: bytes) -> None:
        """Acknowledges them all in one XACK."""
        self._client.xack(self.stream, self.group, *entry_ids)

    def deliveries(self, entry_id: bytes) -> int:
        """How often the entry was delivered (0 if it is no longer pending)."""
        pending = self._client.xpending_range(
            self.stream, self.group, min=entry_id, max=entry_id, count=1
        )
        return int(pending[0]["times_delivered"]) if pending else 0

    def claim(self, consumer: str, *, min_idle_ms: int, start: bytes, count: int) -> Claimed:
        """Takes over up to ``count`` entries pending longer than ``min_idle_ms`` (any consumer's,
        a dead one's above all), with how often each has now been delivered. Entries trimmed
        from the stream meanwhile leave the pending list (Redis 7) and are not returned."""
        next_start, claimed, _deleted = self._client.xautoclaim(
            self.stream, self.group, consumer, min_idle_ms, start, count=count
        )
        if not claimed:
            return Claimed([], next_start)
        ids = [entry_id for entry_id, _ in claimed]
        pending = self._client.xpending_range(
            self.stream,
            self.group,
            min=min(ids, key=_entry_order),
            max=max(ids, key=_entry_order),
            count=len(ids),
            consumername=consumer,
        )
        counts = {p["message_id"]: int(p["times_delivered"]) for p in pending}
        # An entry another consumer claimed back in between is that consumer's now: not ours.
        entries = [(i, f or {}, counts[i]) for i, f in claimed if i in counts]
        return Claimed(entries, next_start)

    def dead_letter(
        self,
        entry_id: bytes,
        fields: Fields,
        *,
        reason: str,
        deliveries: int,
        consumer: str,
    ) -> bool:
        """Moves the entry to the dead letters with why; False when it was not pending any more
        (another consumer acknowledged or moved it first)."""
        letter: list[bytes | str] = []
        for name, value in fields.items():
            letter += [name, value]
        letter += [DEAD_REASON, reason, DEAD_DELIVERIES, str(deliveries)]
        letter += [DEAD_ENTRY_ID, entry_id, DEAD_CONSUMER, consumer]
        moved = self._dead_letter(
            keys=[self.stream, self.dead_letters],
            args=[self.group, entry_id, self._maxlen, *letter],
        )
        return bool(moved)

    def newest_dead_letter(self) -> bytes | None:
        newest: Any = self._client.xrevrange(self.dead_letters, count=1)
        return bytes(newest[0][0]) if newest else None

    def dead_letter_ids(self, *, until: bytes, count: int) -> list[bytes]:
        """The oldest ``count`` dead letters up to ``until``."""
        entries: Any = self._client.xrange(self.dead_letters, max=until, count=count)
        return [entry_id for entry_id, _ in entries]

    def dead_letter_entries(self, count: int) -> list[Entry]:
        entries: Any = self._client.xrange(self.dead_letters, count=count)
        return [(entry_id, fields or {}) for entry_id, fields in entries]

    def replay(self, dead_letter_id: bytes) -> bytes | int:
        """Puts a dead letter back on the stream (see :data:`REPLAY`): the new entry's id, or
        0 (gone already) / -1 (it held no event, and was dropped)."""
        result: bytes | int = self._replay(
            keys=[self.dead_letters, self.stream],
            args=[dead_letter_id, self._maxlen, DEAD_PREFIX],
        )
        return result

    def info(self) -> GroupInfo | None:
        """The group's lag and pending count; None while it does not exist."""
        try:
            groups = self._client.xinfo_groups(self.stream)
        except redis.ResponseError:  # no such key: the stream is not there yet
            return None
        for group in groups:
            if _text(group["name"]) == self.group:
                lag = group.get("lag")
                return GroupInfo(None if lag is None else int(lag), int(group["pending"]))
        return None


def _entry_order(entry_id: bytes) -> tuple[int, int]:
    millis, _, sequence = entry_id.partition(b"-")
    return int(millis), int(sequence)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
