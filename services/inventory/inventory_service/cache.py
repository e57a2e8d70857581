"""The read-through cache of GetItem and ListItems in Redis: no stampede, and never stale stock.

Against the three ways a read-through cache fails its database:

* penetration (a flood of unknown SKUs, each a database read): "no such SKU" is cached too, for
  ``negative_ttl_s``;
* breakdown (many readers missing one key at once, each loading it): a miss takes the key's
  rebuild lease (``SET NX PX`` with a random token, as redis-py's Lock) and loads; the others
  serve the stale copy if there is one, else wait up to ``wait_s`` for the entry (then load
  without storing): one SQLite read per key, across every replica;
* avalanche (much of the cache expiring at once): every lifetime is jittered (``jitter``), and a
  write drops only the SKUs it changed, never the whole cache.

**Why a write never leaves old stock (nor "unknown" for a SKU that now exists) in the cache.**
A reader stores a value only under the lease it took *before* it read SQLite, and only while that
same lease still exists (ENTRY_STORE compares the token). A write, *after* its transaction
commits, deletes the SKU's entry and its lease in one command. So when a store succeeds, no
deletion ran between that lease and that store: each write to the SKU either deleted before the
lease was taken, so it committed before the reader's SQLite read and is in the value, or deletes
after the store, and takes the value away. The classic race (a reader loads old stock, a writer
commits and invalidates, the reader writes the old stock back) ends in a refused store. This is
the lease of "Scaling Memcache at Facebook" (NSDI 2013, 3.2.1), with Redis's compare-and-set
scripts. A new SKU is a write like any other: its "unknown" entry and lease go once it commits.

**Pages** are cached as their SKUs only, in one hash (PAGE_READ); their items are the item
entries, so a Reserve leaves every page cached and reloads one item. A page's SKUs change only
when SKUs are created: that deletes the hash, whose random ``epoch`` field then refuses the
stores that raced it, as the lease does for an item.

**Redis Cluster**: every key a script touches comes in KEYS, and keys used together share a hash
tag (``{item:SKU-0001}``, ``{items}``).

**Redis down or hung**: the cache's client has short timeouts and no retries, behind a breaker
(resilience.Breaker) that 3 failures in a row open: Redis is then skipped, reads come from
SQLite, and one probe at a time tries it again after ``breaker.reset_timeout``, doubling while it
fails. A write whose deletion could not be made is owed, and paid before the cache is read again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import secrets
import threading
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, TypeVar

import redis

from inventory_service import metric_names as m
from inventory_service.domain import Item, ItemsChanged, PageQuery
from inventory_service.metrics import CacheMetrics
from resilience import (
    SYSTEM_CLOCK,
    Breaker,
    BreakerOpen,
    BreakerOptions,
    Clock,
    ConsecutiveFailures,
    Rng,
)

_log = logging.getLogger(__name__)

T = TypeVar("T")

CACHE_NAMESPACE = "inventory:cache"
KIND_ITEM = "item"
KIND_PAGE = "page"
#: The entry of a SKU that does not exist.
NEGATIVE = b"null"

DEFAULT_TTL_S = 30.0
DEFAULT_NEGATIVE_TTL_S = 5.0
DEFAULT_JITTER = 0.15
DEFAULT_STALE_S = 5.0
DEFAULT_LEASE_S = 1.0
DEFAULT_WAIT_S = 0.2
DEFAULT_POLL_S = 0.005
MAX_REDIS_BACKOFF_S = 30.0
REDIS_FAILURES_TO_OPEN = 3


def redis_breaker(backoff_s: float) -> BreakerOptions:
    """Opened by 3 failures in a row: a Redis call that fails or times out costs more than the
    SQLite read it was meant to save, so the next ones go straight to SQLite; one probe
    ``backoff_s`` later, the interval doubling up to 30 s while Redis stays down. Not by one: on
    a starved machine a single slow reply is no outage, and an open breaker lets every miss
    through to SQLite."""
    return BreakerOptions(
        trip=ConsecutiveFailures(threshold=REDIS_FAILURES_TO_OPEN),
        reset_timeout=backoff_s,
        max_reset_timeout=max(backoff_s, MAX_REDIS_BACKOFF_S),
    )


DEFAULT_BREAKER = redis_breaker(2.0)
#: Past this many owed SKUs, the next payment drops every SKU's entry instead.
MAX_OWED_SKUS = 1024
_DELETE_BATCH = 512

#: Reads an entry and, unless it is fresh, tries to take its rebuild lease, in one step.
#: KEYS[1]  the entry, e.g. ``inventory:cache:{item:SKU-0001}:entry``
#: KEYS[2]  its lease, e.g. ``inventory:cache:{item:SKU-0001}:lease``
#: ARGV[1]  this reader's random token
#: ARGV[2]  the lease's lifetime in ms (a reader that dies frees the key after it)
#: ARGV[3]  the stale window in ms: an entry with less time to live than this is stale
#: returns  ``{entry or nil, 1 if fresh else 0, 1 if the lease was taken else 0}``
ENTRY_READ = """
local entry = redis.call('GET', KEYS[1])
if entry then
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl < 0 or ttl > tonumber(ARGV[3]) then
    return {entry, 1, 0}
  end
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {entry, 0, 1}
end
return {entry, 0, 0}
"""

#: Stores a rebuilt entry if the reader's lease still holds (no write dropped it), and frees it.
#: KEYS[1]  the entry
#: KEYS[2]  its lease
#: ARGV[1]  the token the reader took the lease with
#: ARGV[2]  the value
#: ARGV[3]  the entry's lifetime in ms (fresh for the jittered TTL, then stale for the window)
#: returns  1 if stored, 0 if a write dropped the lease meanwhile (or it expired)
ENTRY_STORE = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('DEL', KEYS[2])
return 1
"""

#: Frees a lease its reader could not use (the load failed); never anyone else's.
#: KEYS[1]  the lease
#: ARGV[1]  the reader's token
#: returns  1 if freed, else 0
LEASE_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

#: Reads a page's SKUs from the pages hash (starting the hash if it is missing) and, on a miss,
#: tries to take the page's rebuild lease.
#: KEYS[1]  the pages hash, ``inventory:cache:{items}:pages``
#: KEYS[2]  the page's lease, e.g. ``inventory:cache:{items}:lease:SKU-0020:20``
#: ARGV[1]  the page's field, e.g. ``page:SKU-0020:20``
#: ARGV[2]  this reader's random token
#: ARGV[3]  the lease's lifetime in ms
#: ARGV[4]  a random epoch, kept if the hash is new: a hash deleted and started again never
#:          takes an epoch a racing reader saw
#: ARGV[5]  the lifetime in ms of a new hash
#: returns  ``{epoch, page or nil, 1 if the lease was taken else 0}``
PAGE_READ = """
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[4]
  redis.call('HSET', KEYS[1], 'epoch', epoch)
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
end
local page = redis.call('HGET', KEYS[1], ARGV[1])
if page then
  return {epoch, page, 0}
end
if redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then
  return {epoch, page, 1}
end
return {epoch, page, 0}
"""

#: Stores a page's SKUs if the reader's lease holds and the hash is the one it read (no new SKU
#: dropped it meanwhile), and frees the lease.
#: KEYS[1]  the pages hash
#: KEYS[2]  the page's lease
#: ARGV[1]  the epoch the reader saw
#: ARGV[2]  the reader's token
#: ARGV[3]  the page's field
#: ARGV[4]  the page's SKUs
#: returns  1 if stored, else 0
PAGE_STORE = """
if redis.call('GET', KEYS[2]) ~= ARGV[2] then
  return 0
end
redis.call('DEL', KEYS[2])
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
return 1
"""


def _check(field: str, value: float, lo: float, hi: float) -> None:
    if not lo <= value <= hi:
        raise ValueError(f"CacheOptions.{field}={value!r}: must be in [{lo}, {hi}]")


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheOptions:
    """How long entries live and how readers share a rebuild; checked when built."""

    ttl_s: float = DEFAULT_TTL_S
    #: How long "no such SKU" is believed; short, as a lost invalidation of it would hide an item.
    negative_ttl_s: float = DEFAULT_NEGATIVE_TTL_S
    #: Each TTL is drawn from ``ttl * [1 - jitter, 1 + jitter]``, so entries written together
    #: expire apart.
    jitter: float = DEFAULT_JITTER
    #: How long past its TTL an entry may be served while one reader rebuilds it.
    stale_s: float = DEFAULT_STALE_S
    lease_s: float = DEFAULT_LEASE_S
    #: How long a reader with nothing to serve waits for another's rebuild before loading itself.
    wait_s: float = DEFAULT_WAIT_S
    poll_s: float = DEFAULT_POLL_S
    breaker: BreakerOptions = DEFAULT_BREAKER

    def __post_init__(self) -> None:
        _check("ttl_s", self.ttl_s, 0.01, 86_400)
        _check("negative_ttl_s", self.negative_ttl_s, 0.01, 86_400)
        _check("jitter", self.jitter, 0, 0.5)
        _check("stale_s", self.stale_s, 0, 86_400)
        _check("lease_s", self.lease_s, 0.01, 60)
        _check("wait_s", self.wait_s, 0, 60)
        _check("poll_s", self.poll_s, 0.001, 1)

    def lifetime_ms(self, ttl_s: float, rng: Rng) -> int:
        """An entry's lifetime: its jittered TTL, then the stale window."""
        fresh_s = ttl_s * (1 + self.jitter * (2 * rng.random() - 1))
        return max(1, round((fresh_s + self.stale_s) * 1000))


class Catalog(Protocol):
    """The reads the cache fills itself from (the SQLite store)."""

    def get_item(self, sku: str) -> Item | None: ...

    def get_items(self, skus: Collection[str]) -> dict[str, Item]: ...

    def list_items(self, query: PageQuery) -> tuple[list[Item], bool]: ...

    def all_skus(self) -> list[str]: ...


class _Lookup(NamedTuple):
    entry: bytes | None
    fresh: bool
    leased: bool
    epoch: bytes | None = None


class _Page(NamedTuple):
    skus: list[str]
    more: bool
    items: list[Item] | None  # None when read from the cache: the items come from their entries


class _Unavailable(Exception):
    """Redis failed, or the breaker skips it."""


def item_keys(sku: str, namespace: str = CACHE_NAMESPACE) -> tuple[str, str]:
    """A SKU's entry and lease: one hash tag, so one Cluster slot."""
    tag = f"{namespace}:{{item:{sku}}}"
    return f"{tag}:entry", f"{tag}:lease"


def pages_key(namespace: str = CACHE_NAMESPACE) -> str:
    return f"{namespace}:{{items}}:pages"


def _item_to_json(item: Item | None) -> bytes:
    if item is None:
        return NEGATIVE
    return json.dumps(
        [item.sku, item.name, item.price_minor, item.available], separators=(",", ":")
    ).encode()


def _item_from_json(raw: bytes) -> Item | None:
    values = json.loads(raw)
    return None if values is None else Item(*values)


class ItemCache:
    """GetItem and ListItems through Redis, filled from ``catalog``; writes call ``invalidate``."""

    def __init__(
        self,
        client: redis.Redis,
        catalog: Catalog,
        *,
        options: CacheOptions = CacheOptions(),
        metrics: CacheMetrics,
        clock: Clock = SYSTEM_CLOCK,
        rng: Rng | None = None,
        namespace: str = CACHE_NAMESPACE,
    ) -> None:
        self._client = client
        self._catalog = catalog
        self._options = options
        self._metrics = metrics
        self._clock = clock
        self._rng: Rng = rng or random.Random()
        self._namespace = namespace
        self._pages_key = pages_key(namespace)
        self._lease_ms = round(options.lease_s * 1000)
        self._stale_ms = round(options.stale_s * 1000)
        self._entry_read = client.register_script(ENTRY_READ)
        self._entry_store = client.register_script(ENTRY_STORE)
        self._lease_release = client.register_script(LEASE_RELEASE)
        self._page_read = client.register_script(PAGE_READ)
        self._page_store = client.register_script(PAGE_STORE)
        self._breaker = Breaker(
            options.breaker, name="inventory cache redis", clock=clock, on_state_change=_log_state
        )
        self._lock = threading.Lock()
        # Invalidations owed since a deletion failed; while any are owed the cache is not read.
        self._owed: set[str] = set()
        self._owed_pages = False
        self._owed_all = False
        self._paying = False

    @property
    def redis_state(self) -> str:
        """The breaker's state: "closed" while Redis is used."""
        return self._breaker.state_name

    # --- reads --------------------------------------------------------------------------------

    def get_item(self, sku: str) -> Item | None:
        entry, lease = item_keys(sku, self._namespace)

        def read(token: str) -> _Lookup:
            return _entry_lookup(
                self._entry_read(keys=[entry, lease], args=[token, self._lease_ms, self._stale_ms])
            )

        def store(lookup: _Lookup, token: str, item: Item | None) -> None:
            ttl_s = self._options.ttl_s if item is not None else self._options.negative_ttl_s
            self._entry_store(
                keys=[entry, lease],
                args=[token, _item_to_json(item), self._options.lifetime_ms(ttl_s, self._rng)],
            )

        return self._fetch(
            KIND_ITEM,
            read,
            lambda: self._catalog.get_item(sku),
            store,
            lambda token: self._lease_release(keys=[lease], args=[token]),
            _item_from_json,
        )

    def list_items(self, query: PageQuery) -> tuple[list[Item], bool]:
        """One page: its SKUs from the pages hash, its items from their entries."""
        field = f"page:{query.after}:{query.size}"
        lease = f"{self._namespace}:{{items}}:lease:{query.after}:{query.size}"

        def read(token: str) -> _Lookup:
            epoch, page, leased = self._page_read(
                keys=[self._pages_key, lease],
                args=[
                    field,
                    token,
                    self._lease_ms,
                    secrets.token_hex(8),
                    self._options.lifetime_ms(self._options.ttl_s, self._rng),
                ],
            )
            return _Lookup(page, page is not None, bool(leased), epoch)

        def load() -> _Page:
            items, more = self._catalog.list_items(query)
            return _Page([item.sku for item in items], more, items)

        def store(lookup: _Lookup, token: str, page: _Page) -> None:
            value = json.dumps({"skus": page.skus, "more": page.more}, separators=(",", ":"))
            self._page_store(
                keys=[self._pages_key, lease], args=[lookup.epoch or b"", token, field, value]
            )

        def decode(raw: bytes) -> _Page:
            value = json.loads(raw)
            return _Page(value["skus"], bool(value["more"]), None)

        def release(token: str) -> None:
            self._lease_release(keys=[lease], args=[token])

        page = self._fetch(KIND_PAGE, read, load, store, release, decode)
        if page.items is not None:
            return page.items, page.more
        return self._items(page.skus), page.more

    def _fetch(
        self,
        kind: str,
        read: Callable[[str], _Lookup],
        load: Callable[[], T],
        store: Callable[[_Lookup, str, T], None],
        release: Callable[[str], object],
        decode: Callable[[bytes], T],
    ) -> T:
        """One key: a fresh entry, else the rebuild (lease holder), a stale copy, or a wait."""
        if not self._usable():
            return self._bypass(kind, load)
        token = secrets.token_hex(16)
        waited_since: float | None = None

        def waited(outcome: str) -> None:
            if waited_since is not None:
                self._metrics.waited(kind, outcome)

        while True:
            try:
                lookup = self._call("read", lambda: read(token))
            except _Unavailable:
                return self._bypass(kind, load)
            if lookup.entry is not None and lookup.fresh:
                waited(m.WAIT_FILLED)
                hit = m.RESULT_NEGATIVE_HIT if lookup.entry == NEGATIVE else m.RESULT_HIT
                self._metrics.lookup(kind, hit)
                return decode(lookup.entry)
            if lookup.leased:
                waited(m.WAIT_TOOK_OVER)
                return self._rebuild(kind, lookup, token, load, store, release)
            if lookup.entry is not None:
                waited(m.WAIT_FILLED)
                self._metrics.lookup(kind, m.RESULT_STALE)
                return decode(lookup.entry)
            now = self._clock.monotonic()
            if waited_since is None:
                waited_since = now
            elif now - waited_since >= self._options.wait_s:
                waited(m.WAIT_TIMED_OUT)
                self._metrics.lookup(kind, m.RESULT_MISS)
                self._metrics.load(kind)
                return load()
            self._clock.sleep(self._options.poll_s)

    def _rebuild(
        self,
        kind: str,
        lookup: _Lookup,
        token: str,
        load: Callable[[], T],
        store: Callable[[_Lookup, str, T], None],
        release: Callable[[str], object],
    ) -> T:
        """The lease holder's load, stored if no write dropped the lease meanwhile."""
        self._metrics.lookup(kind, m.RESULT_MISS)
        self._metrics.load(kind)
        try:
            value = load()
        except BaseException:
            self._try("store", lambda: release(token))
            raise
        self._try("store", lambda: store(lookup, token, value))
        return value

    def _items(self, skus: Sequence[str]) -> list[Item]:
        """A page's items from their entries; the ones missing come in one SQLite query.

        A page never waits for another reader's rebuild of an item: it loads what it lacks in
        the one query it makes anyway, and stores only the items whose lease it took.
        """
        if not skus:
            return []
        if not self._usable():
            return self._bypass_items(skus)
        tokens = {sku: secrets.token_hex(16) for sku in skus}
        keys = {sku: item_keys(sku, self._namespace) for sku in skus}

        def read_all() -> list[_Lookup]:
            pipe = self._client.pipeline(transaction=False)
            for sku in skus:
                self._entry_read(
                    keys=list(keys[sku]),
                    args=[tokens[sku], self._lease_ms, self._stale_ms],
                    client=pipe,
                )
            return [_entry_lookup(reply) for reply in pipe.execute()]

        try:
            lookups = self._call("read", read_all)
        except _Unavailable:
            return self._bypass_items(skus)
        found: dict[str, Item | None] = {}
        leased: list[str] = []
        for sku, lookup in zip(skus, lookups, strict=True):
            if lookup.entry is not None and (lookup.fresh or not lookup.leased):
                result = m.RESULT_HIT if lookup.fresh else m.RESULT_STALE
                if lookup.entry == NEGATIVE:
                    result = m.RESULT_NEGATIVE_HIT if lookup.fresh else result
                self._metrics.lookup(KIND_ITEM, result)
                found[sku] = _item_from_json(lookup.entry)
            else:
                self._metrics.lookup(KIND_ITEM, m.RESULT_MISS)
                if lookup.leased:
                    leased.append(sku)
        missing = [sku for sku in skus if sku not in found]
        if missing:
            self._metrics.load(KIND_ITEM)
            loaded = self._catalog.get_items(missing)
            found.update((sku, loaded.get(sku)) for sku in missing)
        if leased:

            def store_all() -> None:
                pipe = self._client.pipeline(transaction=False)
                for sku in leased:
                    item = found[sku]
                    ttl_s = (
                        self._options.ttl_s if item is not None else self._options.negative_ttl_s
                    )
                    self._entry_store(
                        keys=list(keys[sku]),
                        args=[
                            tokens[sku],
                            _item_to_json(item),
                            self._options.lifetime_ms(ttl_s, self._rng),
                        ],
                        client=pipe,
                    )
                pipe.execute()

            self._try("store", store_all)
        return [item for sku in skus if (item := found[sku]) is not None]

    def _bypass(self, kind: str, load: Callable[[], T]) -> T:
        self._metrics.lookup(kind, m.RESULT_BYPASS)
        self._metrics.load(kind)
        return load()

    def _bypass_items(self, skus: Sequence[str]) -> list[Item]:
        for _ in skus:
            self._metrics.lookup(KIND_ITEM, m.RESULT_BYPASS)
        self._metrics.load(KIND_ITEM)
        loaded = self._catalog.get_items(skus)
        return [loaded[sku] for sku in skus if sku in loaded]

    # --- invalidation -------------------------------------------------------------------------

    def invalidate(self, change: ItemsChanged) -> None:
        """After a write commits: drops the changed SKUs' entries and leases (and the pages'
        SKUs when SKUs were created); owed when Redis cannot be reached."""
        try:
            self._call("invalidate", lambda: self._delete(change.skus, pages=change.created))
        except _Unavailable:
            with self._lock:
                self._owe(change.skus, pages=change.created, everything=False)

    def invalidate_all(self) -> None:
        """Drops every SKU's entry and the pages (at start-up: the file may have changed while
        this process was down)."""
        with self._lock:
            self._owe((), pages=True, everything=True)
        self._usable()

    def _delete(self, skus: Iterable[str], *, pages: bool) -> None:
        pipe = self._client.pipeline(transaction=False)
        queued = 0
        for sku in skus:
            pipe.delete(*item_keys(sku, self._namespace))  # one slot: the keys share a hash tag
            queued += 1
            if queued == _DELETE_BATCH:
                pipe.execute()
                queued = 0
        if pages:
            pipe.delete(self._pages_key)
        pipe.execute()

    def _owe(self, skus: Iterable[str], *, pages: bool, everything: bool) -> None:
        """Called under ``self._lock``."""
        self._owed.update(skus)
        self._owed_pages = self._owed_pages or pages
        self._owed_all = self._owed_all or everything or len(self._owed) > MAX_OWED_SKUS
        if self._owed_all:
            self._owed.clear()

    def _usable(self) -> bool:
        """Pays owed invalidations; True when the cache may be read."""
        with self._lock:
            if self._paying:
                return False  # another thread is paying: until it is done, entries may be stale
            if not (self._owed or self._owed_pages or self._owed_all):
                return True
            owed, pages, everything = self._owed, self._owed_pages, self._owed_all
            self._owed, self._owed_pages, self._owed_all = set(), False, False
            self._paying = True
        paid = False
        try:
            skus = self._catalog.all_skus() if everything else owed
            self._call("invalidate", lambda: self._delete(skus, pages=pages or everything))
            paid = True
        except _Unavailable:
            pass
        finally:
            with self._lock:
                self._paying = False
                if not paid:
                    self._owe(owed, pages=pages, everything=everything)
        return paid

    # --- Redis behind the breaker -------------------------------------------------------------

    def _call(self, operation: str, call: Callable[[], T]) -> T:
        try:
            probe = self._breaker.acquire()
        except BreakerOpen:
            raise _Unavailable from None
        try:
            result = call()
        except redis.RedisError as error:
            self._breaker.record(probe, True)
            self._metrics.redis_error(operation)
            _log.debug("redis cache %s failed: %s", operation, error)
            raise _Unavailable from error
        except BaseException:
            self._breaker.record(probe, None)  # no verdict on Redis, but a probe must end
            raise
        self._breaker.record(probe, False)
        return result

    def _try(self, operation: str, call: Callable[[], object]) -> None:
        """A call whose failure only costs a later miss (a store, a lease release)."""
        with contextlib.suppress(_Unavailable):
            self._call(operation, call)


def _entry_lookup(reply: Any) -> _Lookup:
    entry, fresh, leased = reply
    return _Lookup(entry, bool(fresh), bool(leased))


def _log_state(old: str, new: str) -> None:
    if new == "open" and old == "closed":
        _log.warning("redis cache unavailable, reading SQLite directly")
    elif new == "closed":
        _log.info("redis cache available again")
