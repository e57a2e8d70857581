"""Per-order saga leases in Redis: one runner at a time drives an order (after redis-py's Lock).

A lease's term is short (a few seconds), so the orders of a runner that dies are free again
soon; one keep-alive thread per process renews every lease the process holds, in one pipelined
round trip, so a saga waiting on a slow call keeps its order however long the call takes.
python-redis-lock's auto_renewal does the same with a thread per lock, which a service holding
a lease per request in flight cannot afford.

A lease alone cannot stop a runner that was paused past its term (a GC pause, SIGSTOP, a slow
disk) and wakes up believing it still holds it. So every grant also returns a *fencing token*
(Kleppmann, "How to do distributed locking", 2016): the next value of a per-order counter,
incremented in the same script that takes the lease, so each grant's token is larger than
every earlier grant's. An order's first grant, in the script that admits it
(claims.ADMIT_AND_CLAIM), needs no counter: the order id is new, so its token is
:data:`FIRST_FENCE`, and every later grant's is above it. The order store keeps the token of
the last saga write on the order's row and refuses a write with an older one
(``ports.FencedOut``); a runner that takes an order over stamps its token on the row before
its first call. What this guarantees, and what not:

- The order row is fenced: once a newer runner has written (or stamped) the row, no write of
  an older runner lands, whatever it believes about its lease; its saga stops at that write
  and makes no further call. ``keep()`` before each step usually stops it sooner.
- The calls a stale runner makes before that write are not fenced (inventory and payment see
  no tokens): the call it was paused in, and from RESERVE the Charge that follows unsaved
  (domain.UNSAVED_STEPS). That is safe because each call is idempotent by order_id or
  request_id (Reserve by order_id, Charge by "charge-"+order_id, ...): the new runner's same
  call gets the same reservation or payment back, so stock and money move once, and a late
  copy cannot undo a compensation (a Charge after its VoidCharge finds the void's record, a
  Reserve after its Release the released reservation). Beyond those, nothing the stale
  runner decides is acted on: every other step is saved before it runs, and that write is
  refused.
- The tokens are only as durable as Redis: the counter lives ``FENCE_TTL_S`` after the last
  grant, far longer than any saga runs, and a caller passes the highest token the row has
  seen (``after``), so a counter Redis lost restarts above every token already written and
  the order can still be finished. A runner paused across such a loss, holding a token it
  has not written yet, may share it with its successor: the lease's own guarantee ends there.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable

import redis

from meshkit import tracing

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

#: Takes a free lease and hands out its fencing token: the next value of the order's counter,
#: which never goes down while the counter lives (each grant renews its time to live) and is
#: raised above ``after`` when Redis lost it (or never had it: the grant that admitted the
#: order held FIRST_FENCE without a counter, so ``after`` is never below it). Both keys share
#: one hash tag (lease_key), so the script runs on one Redis Cluster node.
#: KEYS[1] the lease key; KEYS[2] the fence counter key.
#: ARGV[1] the caller's token; ARGV[2] the lease's time to live in ms;
#: ARGV[3] the counter's time to live in ms;
#: ARGV[4] the highest token handed out that the caller knows of (>= FIRST_FENCE).
#: Returns the fencing token (> FIRST_FENCE) if the lease is now the caller's, 0 if someone
#: holds it.
ACQUIRE_WITH_FENCE = """
if not redis.call('set', KEYS[1], ARGV[1], 'nx', 'px', ARGV[2]) then
    return 0
end
local fence = redis.call('incr', KEYS[2])
if fence <= tonumber(ARGV[4]) then
    fence = tonumber(ARGV[4]) + 1
    redis.call('set', KEYS[2], fence)
end
redis.call('pexpire', KEYS[2], ARGV[3])
return fence
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

#: The fencing token of an order's first grant, made by the script that admits the order: no
#: other runner can have held a lease on an order id just made, so it takes no counter.
FIRST_FENCE = 1
#: Lease.keep() trusts a confirmation this recent without asking Redis again.
LEASE_RECHECK_S = 1.0
DEFAULT_LEASE_MS = 3_000
#: A fence counter outlives its order's last grant by this much: an order is driven for
#: seconds, and a stuck one is retried (and its counter renewed) at least every few minutes.
FENCE_TTL_S = 7 * 86_400


def lease_key(customer_id: str, order_id: str) -> str:
    """The braces are a Redis Cluster hash tag, the customer's: an order's lease and fence
    share one slot with its request_id claim and its customer's rate limit, so the script that
    admits a new order (claims.ADMIT_AND_CLAIM) takes the lease, claim and limit together."""
    return f"order:lease:{{{customer_id}}}:{order_id}"


def fence_key(customer_id: str, order_id: str) -> str:
    return f"order:fence:{{{customer_id}}}:{order_id}"


class Lease:
    """One runner's exclusive, expiring right to drive one order's saga.

    ``SET NX PX`` with a random token takes it (in :data:`ACQUIRE_WITH_FENCE`, which also
    hands out its fencing token); only compare-then-act scripts extend or release it, so a
    runner whose lease expired can never cut short its successor's.
    """

    def __init__(self, leases: Leases, order_id: str, customer_id: str) -> None:
        self._leases = leases
        self.customer_id = customer_id
        self.key = lease_key(customer_id, order_id)
        self.fence_key = fence_key(customer_id, order_id)
        self.token = secrets.token_hex(16).encode()
        #: The fencing token of this grant, which every saga write carries; 0 until taken.
        self.fence = 0
        #: When Redis last confirmed we hold it (monotonic; read before asking, so never late).
        self._confirmed_at: float | None = None

    def acquire(self, *, after: int = 0) -> bool:
        """Takes the lease if it is free; never waits. Raises redis errors (the caller decides).

        ``after``: the highest fencing token the caller has seen on the order's row, if any.
        The token handed out is above it and above FIRST_FENCE, which the order's admission
        holds (the order's creator, paused before its insert, may still write with it).
        """
        leases = self._leases
        asked_at = leases.monotonic()
        fence = int(
            leases.acquire_script(
                keys=[self.key, self.fence_key],
                args=[self.token, leases.lease_ms, FENCE_TTL_S * 1000, max(after, FIRST_FENCE)],
            )
        )
        if fence:
            self.taken(asked_at, fence)
        return bool(fence)

    def now(self) -> float:
        """The leases' monotonic clock, read before asking Redis for the lease in another way."""
        return self._leases.monotonic()

    def taken(self, asked_at: float, fence: int) -> None:
        """Records that a script asked at ``asked_at`` took the lease as acquire() would, with
        fencing token ``fence``; from now on the keep-alive renews it until it is released or
        forgotten."""
        self.fence = fence
        self._confirmed_at = asked_at
        self._leases.hold(self)

    @property
    def confirmed_at(self) -> float | None:
        return self._confirmed_at

    def renewed(self, asked_at: float, extended: bool) -> None:
        """Records a renewal asked at ``asked_at``: confirmed, or lost for good."""
        self._confirmed_at = asked_at if extended else None
        if not extended:
            self._leases.drop(self)

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
            self._confirmed_at = None  # unknown: keep() asks again, the keep-alive goes on
            return False
        self.renewed(asked_at, extended)
        return extended

    def keep(self) -> bool:
        """Before each saga step: renews the lease unless Redis confirmed it very recently.

        A saga runs its steps within milliseconds, and renewing before every step would cost
        a Redis round trip per step (a quarter of the order service's time under load). Within
        ``recheck_s`` of the last confirmation (by acquire, the keep-alive or keep itself) the
        lease is certainly ours (it lasts ``lease_ms``, four times longer, and only our token
        can delete it), and a lease lost with Redis's data goes unnoticed for at most
        ``recheck_s``.
        """
        confirmed_at = self._confirmed_at
        if confirmed_at is not None and (
            self._leases.monotonic() - confirmed_at < self._leases.recheck_s
        ):
            return True
        return self.extend()

    def release(self) -> None:
        self._leases.drop(self)
        try:
            self._leases.delete_script(keys=[self.key], args=[self.token])
        except redis.RedisError as error:  # it expires on its own
            _log.warning("could not release %s: %s", self.key, error)

    def forget(self) -> None:
        """Stops renewing the lease and leaves it to expire within its term (no round trip):
        for a finished order, whose lease guards nothing any more."""
        self._leases.drop(self)


class Leases:
    """Makes per-order leases; one Redis, one lease term, one keep-alive for those held."""

    def __init__(
        self,
        client: redis.Redis,
        lease_ms: int = DEFAULT_LEASE_MS,
        *,
        recheck_s: float = LEASE_RECHECK_S,
        monotonic: Callable[[], float] = time.monotonic,
        keep_alive: bool = True,
    ) -> None:
        if recheck_s < 0:
            raise ValueError(f"recheck_s must be >= 0, got {recheck_s}")
        self.redis = client
        self.lease_ms = lease_ms
        # Never trust a confirmation for more than a quarter of the lease's term.
        self.recheck_s = min(recheck_s, lease_ms / 4000)
        #: Held leases are renewed once their confirmation is this old: twice per recheck_s,
        #: so keep() finds them fresh and Redis's copy never falls below 3/4 of the term.
        self.renew_after_s = self.recheck_s / 2
        self.monotonic = monotonic
        self.acquire_script = client.register_script(ACQUIRE_WITH_FENCE)
        self.extend_script = client.register_script(COMPARE_AND_EXTEND)
        self.delete_script = client.register_script(COMPARE_AND_DELETE)
        self._keep_alive = keep_alive
        self._held: set[Lease] = set()
        self._held_lock = threading.Lock()
        self._closed = threading.Event()
        self._keeper: threading.Thread | None = None
        self._failing = False

    def lease(self, order_id: str, *, customer_id: str) -> Lease:
        """The lease of the order ``order_id`` of ``customer_id`` (whose hash tag its keys take)."""
        return Lease(self, order_id, customer_id)

    def held(self, order_id: str, *, customer_id: str) -> bool:
        """Whether some runner is driving this order's saga right now."""
        return bool(self.redis.exists(lease_key(customer_id, order_id)))

    def hold(self, lease: Lease) -> None:
        """Puts a lease just taken under the keep-alive (started with the first one)."""
        with self._held_lock:
            self._held.add(lease)
            if self._keep_alive and self._keeper is None and not self._closed.is_set():
                self._keeper = threading.Thread(
                    target=self._keep, name="order-lease-keepalive", daemon=True
                )
                self._keeper.start()

    def drop(self, lease: Lease) -> None:
        with self._held_lock:
            self._held.discard(lease)

    def holding(self) -> int:
        """How many leases this process holds and renews."""
        with self._held_lock:
            return len(self._held)

    def renew_held(self) -> int:
        """Renews every held lease whose confirmation is older than ``renew_after_s``, in one
        pipelined round trip; returns how many it renewed. Raises redis errors."""
        asked_at = self.monotonic()
        with self._held_lock:
            due = [
                lease
                for lease in self._held
                if lease.confirmed_at is None or asked_at - lease.confirmed_at >= self.renew_after_s
            ]
        if not due:
            return 0
        pipe = self.redis.pipeline(transaction=False)
        for lease in due:
            self.extend_script(keys=[lease.key], args=[lease.token, self.lease_ms], client=pipe)
        renewed = 0
        for lease, extended in zip(due, pipe.execute(), strict=True):
            if extended:
                renewed += 1
            elif self._is_held(lease):  # not one released while the renewal was on its way
                _log.warning("lease %s was lost before its saga let it go", lease.key)
            lease.renewed(asked_at, bool(extended))
        return renewed

    def _is_held(self, lease: Lease) -> bool:
        with self._held_lock:
            return lease in self._held

    def _keep(self) -> None:
        with tracing.background():  # a renewal every second is no trace of its own
            self._renew_until_closed()

    def _renew_until_closed(self) -> None:
        while not self._closed.wait(self.renew_after_s):
            try:
                self.renew_held()
            except redis.RedisError as error:
                if not self._failing:  # one line per outage, not one per tick
                    _log.warning("could not renew saga leases: %s", error)
                self._failing = True
            else:
                self._failing = False

    def close(self) -> None:
        """Stops the keep-alive; leases still held expire within their term."""
        self._closed.set()
        if self._keeper is not None:
            self._keeper.join(timeout=5)
