"""Per-order saga leases in Redis: one runner at a time drives an order (after redis-py's Lock)."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable

import redis

_log = logging.getLogger(__name__)

#: Deletes a key only if it still holds the caller's value, so nobody deletes what it does not own.
#: KEYS[1] the key; ARGV[1] the value the caller set (a lease token or a claim).
#: Returns 1 if the key was deleted, 0 if it was missing or held someone else's value.
COMPARE_AND_DELETE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""

#: Resets a lease's time to live, only if the caller still holds it.
#: KEYS[1] the lease key; ARGV[1] the caller's token; ARGV[2] the new time to live in ms.
#: Returns 1 if extended, 0 if the lease expired or belongs to someone else.
COMPARE_AND_EXTEND = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""

#: Lease.keep() trusts a confirmation this recent without asking Redis again.
LEASE_RECHECK_S = 1.0


def lease_key(order_id: str) -> str:
    return f"order:lease:{order_id}"


class Lease:
    """One runner's exclusive, expiring right to drive one order's saga.

    ``SET NX PX`` with a random token takes it; only compare-then-act scripts extend or
    release it, so a runner whose lease expired can never cut short its successor's.
    """

    def __init__(self, leases: Leases, order_id: str) -> None:
        self._leases = leases
        self.key = lease_key(order_id)
        self.token = secrets.token_hex(16).encode()
        #: When Redis last confirmed we hold it (monotonic; read before asking, so never late).
        self._confirmed_at: float | None = None

    def acquire(self) -> bool:
        """Takes the lease if it is free; never waits. Raises redis errors (the caller decides)."""
        leases = self._leases
        asked_at = leases.monotonic()
        taken = bool(leases.redis.set(self.key, self.token, nx=True, px=leases.lease_ms))
        self._confirmed_at = asked_at if taken else None
        return taken

    def now(self) -> float:
        """The leases' monotonic clock, read before asking Redis for the lease in another way."""
        return self._leases.monotonic()

    def taken(self, asked_at: float) -> None:
        """Records that a script asked at ``asked_at`` took the lease as acquire() would."""
        self._confirmed_at = asked_at

    @property
    def lease_ms(self) -> int:
        return self._leases.lease_ms

    def extend(self) -> bool:
        """Renews the lease for another full term; False if it was lost (or Redis is away)."""
        leases = self._leases
        asked_at = leases.monotonic()
        try:
            extended = bool(
                leases.extend_script(keys=[self.key], args=[self.token, leases.lease_ms])
            )
        except redis.RedisError as error:
            _log.warning("could not extend %s: %s", self.key, error)
            extended = False
        self._confirmed_at = asked_at if extended else None
        return extended

    def keep(self) -> bool:
        """Before each saga step: renews the lease unless Redis confirmed it very recently.

        A saga runs its steps within milliseconds, and renewing before every step would cost
        a Redis round trip per step (a quarter of the order service's time under load). Within
        ``recheck_s`` of the last confirmation the lease is certainly ours (it lasts
        ``lease_ms``, far longer, and only our token can delete it), and a lease lost with
        Redis's data goes unnoticed for at most ``recheck_s``, well below the idle age the
        recovery loop waits before it takes an order over.
        """
        confirmed_at = self._confirmed_at
        if confirmed_at is not None and (
            self._leases.monotonic() - confirmed_at < self._leases.recheck_s
        ):
            return True
        return self.extend()

    def release(self) -> None:
        try:
            self._leases.delete_script(keys=[self.key], args=[self.token])
        except redis.RedisError as error:  # it expires on its own
            _log.warning("could not release %s: %s", self.key, error)


class Leases:
    """Makes per-order leases; one Redis, one lease term."""

    def __init__(
        self,
        client: redis.Redis,
        lease_ms: int,
        *,
        recheck_s: float = LEASE_RECHECK_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if recheck_s < 0:
            raise ValueError(f"recheck_s must be >= 0, got {recheck_s}")
        self.redis = client
        self.lease_ms = lease_ms
        # Never trust a confirmation for more than a quarter of the lease's term.
        self.recheck_s = min(recheck_s, lease_ms / 4000)
        self.monotonic = monotonic
        self.extend_script = client.register_script(COMPARE_AND_EXTEND)
        self.delete_script = client.register_script(COMPARE_AND_DELETE)

    def lease(self, order_id: str) -> Lease:
        return Lease(self, order_id)

    def held(self, order_id: str) -> bool:
        """Whether some runner is driving this order's saga right now."""
        return bool(self.redis.exists(lease_key(order_id)))
