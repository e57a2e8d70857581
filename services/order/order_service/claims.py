"""AIP-155 request_id claims in Redis: the first CreateOrder to claim a request_id runs its saga."""

from __future__ import annotations

from dataclasses import dataclass

import redis

from order_service.leases import COMPARE_AND_DELETE

IDEMPOTENCY_TTL_S = 86_400


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
        self._delete = client.register_script(COMPARE_AND_DELETE)

    def claim(self, request_id: str, claim: Claim) -> Claim | None:
        """None if ``claim`` now owns request_id, else the claim that already does."""
        key = claim_key(request_id)
        while True:
            if self._redis.set(key, claim.encode(), nx=True, ex=self._ttl_s):
                return None
            raw = self._redis.get(key)
            if raw is not None:
                return Claim.decode(raw)
            # The holder withdrew between our SET and GET: try again.

    def holder(self, request_id: str) -> Claim | None:
        raw = self._redis.get(claim_key(request_id))
        return None if raw is None else Claim.decode(raw)

    def withdraw(self, request_id: str, claim: Claim) -> bool:
        """Removes our claim (never someone else's) so the request_id can be used again."""
        return bool(self._delete(keys=[claim_key(request_id)], args=[claim.encode()]))
