"""AIP-155 request_id claims in Redis: the first CreateOrder to claim a request_id runs its saga.

A new order is admitted in one script, one round trip: the request_id's claim, the customer's
rate limit (ratelimit.py) and the new order's lease (leases.py). Every key it takes carries the
customer's hash tag, so on a Redis Cluster they live on one node.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from order_service.leases import COMPARE_AND_DELETE, FIRST_FENCE, Lease
from order_service.ratelimit import CustomerRateLimit, rate_limit_key

IDEMPOTENCY_TTL_S = 86_400

#: Admits a new order: claims its request_id and takes the new order's lease in the same step,
#: so a claim is never seen without its runner's lease (a duplicate then waits, never takes
#: over), after charging the customer's rate limit (GCRA, see ratelimit.py). A request_id
#: already claimed is neither charged nor refused: a duplicate waits for its order.
#:
#: Three commands on the usual path, three SETs, and none of them reads a clock: the customer's
#: theoretical arrival time is kept as its key's expiry, which Redis counts on its own clock, so
#: order replicas with skewed clocks share one schedule and no ``TIME`` is needed.
#:
#: - ``SET NX GET`` claims the request_id and reads who holds it in one command (NX with GET
#:   needs Redis >= 7.0; Debian bookworm's redis-server, which ``make system-deps`` installs,
#:   is 7.0.15). A later refusal deletes the claim again: the script is atomic, so nobody saw it.
#: - The customer's arrival time: ``SET NX PX interval`` charges a customer with no key (idle
#:   since their last order's interval ran out: the key expires then) in that one command, as
#:   GCRA charges a missing TAT (now + interval). A customer mid-burst has a key: its ``PTTL``
#:   is how far the TAT is ahead of now, and one more ``SET PX`` pushes it on by an interval;
#:   a refusal writes nothing.
#: - The lease's fencing token is leases.FIRST_FENCE with no counter: the order id is new, so
#:   this is its first grant, and every later grant (leases.ACQUIRE_WITH_FENCE) is above it.
#:
#: KEYS[1] the claim key; KEYS[2] the new order's lease key;
#: KEYS[3] the customer's rate-limit key (its expiry is the theoretical arrival time).
#: ARGV[1] the claim (order_id|fingerprint); ARGV[2] its time to live in s;
#: ARGV[3] the lease token; ARGV[4] the lease's time to live in ms;
#: ARGV[5] the rate limit's emission interval in µs (1 s / rate; 0: no limit, KEYS[3] unused);
#: ARGV[6] its tolerance in µs (interval * (burst - 1)).
#: Returns {1} if the claim and the lease are now the caller's (the limit charged one
#: interval); {0, the claim holding the request_id}; {2, µs until the customer's next order
#: would be let in} when over the limit; an error if the new order's lease is somehow held.
#: Nothing changed unless it returns {1}.
ADMIT_AND_CLAIM = """
local holder = redis.call('set', KEYS[1], ARGV[1], 'nx', 'ex', ARGV[2], 'get')
if holder then
    return {0, holder}
end
local interval = tonumber(ARGV[5])
local charged, ahead
if interval > 0 then
    -- PX counts whole ms: an interval under 1 ms is charged as 1 ms.
    local interval_ms = math.max(1, math.ceil(interval / 1000))
    charged = redis.call('set', KEYS[3], '1', 'nx', 'px', interval_ms)
    if not charged then
        ahead = math.max(redis.call('pttl', KEYS[3]), 0) * 1000
        local wait = ahead - tonumber(ARGV[6])
        if wait > 0 then
            redis.call('del', KEYS[1])
            return {2, wait}
        end
    end
end
if not redis.call('set', KEYS[2], ARGV[3], 'nx', 'px', ARGV[4]) then
    redis.call('del', KEYS[1])
    if charged then
        redis.call('del', KEYS[3])
    end
    return redis.error_reply('lease ' .. KEYS[2] .. ' is already held')
end
if ahead then
    redis.call('set', KEYS[3], '1', 'px', math.max(1, math.ceil((ahead + interval) / 1000)))
end
return {1}
"""

_HELD, _ADMITTED, _LIMITED = 0, 1, 2


def claim_key(customer_id: str, request_id: str) -> str:
    """Under the customer's hash tag (see leases.lease_key). A request_id is one order across
    customers too: SQLite's UNIQUE(request_id) refuses a second customer's insert."""
    return f"order:idem:{{{customer_id}}}:{request_id}"


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
        self._admit = client.register_script(ADMIT_AND_CLAIM)
        self._delete = client.register_script(COMPARE_AND_DELETE)

    def claim(
        self,
        request_id: str,
        claim: Claim,
        lease: Lease,
        *,
        limit: CustomerRateLimit | None = None,
    ) -> Claim | None:
        """None if ``claim`` now owns request_id and ``lease`` (its new order's, whose customer
        it is) is taken; else the claim that already owns it, and the lease is not taken.

        With ``limit``, a request_id not claimed yet is charged to the customer's rate limit
        first: over it, ResourceExhausted and nothing is claimed. Raises redis errors.
        """
        customer_id = lease.customer_id
        interval_us, tolerance_us = (0, 0) if limit is None else limit.script_args
        asked_at = lease.now()
        try:
            reply = self._admit(
                keys=[claim_key(customer_id, request_id), lease.key, rate_limit_key(customer_id)],
                args=[
                    claim.encode(),
                    self._ttl_s,
                    lease.token,
                    lease.lease_ms,
                    interval_us,
                    tolerance_us,
                ],
            )
        except redis.RedisError:
            if limit is not None:
                limit.unavailable()
            raise
        kind = reply[0]
        if kind == _LIMITED and limit is not None:  # only with an interval does it limit
            limit.refuse(customer_id, int(reply[1]))
        if kind == _ADMITTED:
            lease.taken(asked_at, FIRST_FENCE)
            if limit is not None:
                limit.allowed()
            return None
        return Claim.decode(reply[1])

    def holder(self, request_id: str, *, customer_id: str) -> Claim | None:
        raw = self._redis.get(claim_key(customer_id, request_id))
        return None if raw is None else Claim.decode(raw)

    def withdraw(self, request_id: str, claim: Claim, *, customer_id: str) -> bool:
        """Removes our claim (never someone else's) so the request_id can be used again."""
        return bool(self._delete(keys=[claim_key(customer_id, request_id)], args=[claim.encode()]))
