"""AIP-155 request_id claims in Redis: the first CreateOrder to claim a request_id runs its saga."""

from __future__ import annotations

from dataclasses import dataclass

import redis

from order_service.leases import COMPARE_AND_DELETE, FENCE_TTL_S, Lease

IDEMPOTENCY_TTL_S = 86_400

#: Claims a request_id for a new order and takes that order's lease in the same step, so a
#: claim is never seen without its runner's lease (a duplicate then waits, never takes over),
#: and hands out the lease's fencing token as leases.ACQUIRE_WITH_FENCE does (a new order's
#: counter starts at 1). The claim's key hashes by request_id, the lease's by order_id: on a
#: Redis Cluster this script would need both on one node.
#: KEYS[1] the claim key; KEYS[2] the new order's lease key; KEYS[3] its fence counter key.
#: ARGV[1] the claim (order_id|fingerprint); ARGV[2] its time to live in s;
#: ARGV[3] the lease token; ARGV[4] the lease's time to live in ms;
#: ARGV[5] the fence counter's time to live in ms.
#: Returns the fencing token (an integer) if the claim and the lease are now the caller's,
#: else the claim holding the request_id; an error if the new order's lease is somehow held.
CLAIM_WITH_LEASE = """
local holder = redis.call('get', KEYS[1])
if holder then
    return holder
end
if not redis.call('set', KEYS[2], ARGV[3], 'nx', 'px', ARGV[4]) then
    return redis.error_reply('lease ' .. KEYS[2] .. ' is already held')
end
redis.call('set', KEYS[1], ARGV[1], 'ex', ARGV[2])
local fence = redis.call('incr', KEYS[3])
redis.call('pexpire', KEYS[3], ARGV[5])
return fence
"""


def claim_key(request_id: str) -> str:
    return f"order:idem:{request_id}"


@dataclass(frozen=True, slots=True)
class Claim:
    """Who owns a request_id: the order it became and the payload's fingerprint."""

    order_id: str
    fingerprint: str

    def encode(self) -> bytes:
        return f"{self.order_id}|{self.fingerprint}".encode()

    @classmethod
    def decode(cls, raw: bytes | str) -> Claim:
        text = raw.decode() if isinstance(raw, bytes) else raw
        order_id, _, digest = text.partition("|")
        return cls(order_id, digest)


class Claims:
    """Claims expire after ``ttl_s``; SQLite's UNIQUE(request_id) outlives them."""

    def __init__(self, client: redis.Redis, ttl_s: int = IDEMPOTENCY_TTL_S) -> None:
        self._redis = client
        self._ttl_s = ttl_s
        self._claim = client.register_script(CLAIM_WITH_LEASE)
        self._delete = client.register_script(COMPARE_AND_DELETE)

    def claim(self, request_id: str, claim: Claim, lease: Lease) -> Claim | None:
        """None if ``claim`` now owns request_id and ``lease`` (its new order's) is taken;
        else the claim that already owns it, and the lease is not taken."""
        asked_at = lease.now()
        raw = self._claim(
            keys=[claim_key(request_id), lease.key, lease.fence_key],
            args=[claim.encode(), self._ttl_s, lease.token, lease.lease_ms, FENCE_TTL_S * 1000],
        )
        if isinstance(raw, int):
            lease.taken(asked_at, raw)
            return None
        return Claim.decode(raw)

    def holder(self, request_id: str) -> Claim | None:
        raw = self._redis.get(claim_key(request_id))
        return None if raw is None else Claim.decode(raw)

    def withdraw(self, request_id: str, claim: Claim) -> bool:
        """Removes our claim (never someone else's) so the request_id can be used again."""
        return bool(self._delete(keys=[claim_key(request_id)], args=[claim.encode()]))
