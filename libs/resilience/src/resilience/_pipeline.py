"""The whole pipeline for one target, with no grpc import.

Order, fixed (Microsoft's standard resilience handler):
bulkhead -> overall deadline -> retry (with budget) -> circuit breaker -> per-attempt timeout.

The interceptors hand over an `Adapter` that knows how to send one attempt through grpc and
read its status; everything else (limits, arithmetic, decisions, events) happens here, so it
is tested with a fake clock and a fake adapter.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from ._backoff import Wait
from ._breaker import OPEN, Breaker, BreakerOpen
from ._budget import RetryBudget
from ._bulkhead import Bulkhead
from ._clock import SYSTEM_CLOCK, Clock, Rng
from ._codes import AVAILABILITY_FAILURES, CANCELLED, DEADLINE_EXCEEDED, OK, RESOURCE_EXHAUSTED
from ._deadline import get_inbound_deadline
from ._errors import LocalFailure
from ._events import (
    OUTCOME_BREAKER_OPEN,
    OUTCOME_BULKHEAD_FULL,
    OUTCOME_DEADLINE,
    OUTCOME_ERROR,
    OUTCOME_SUCCESS,
    AttemptEnded,
    BreakerRejected,
    BreakerStateChanged,
    BulkheadRejected,
    CallEnded,
    CallSite,
    DeadlineExceededLocally,
    Event,
    Listener,
    RetryBudgetExhausted,
    RetryScheduled,
    success_notifier,
)
from ._policy import ClientPolicy, Idempotency

_log = logging.getLogger(__name__)

Ctx = TypeVar("Ctx", contravariant=True)
R = TypeVar("R")

# A failed attempt as the adapter reports it: (status code name, grpc-retry-pushback-ms or None).
Status = tuple[str, str | None]


class Adapter(Protocol[Ctx, R]):
    """How one call type sends an attempt and reads its outcome (sync grpc)."""

    def send(self, ctx: Ctx, timeout: float, attempt: int) -> R: ...

    def status(self, result: R) -> Status | None:
        """None for success, else the failure's code and pushback."""
        ...

    def has_key(self, ctx: Ctx) -> bool:
        """Whether the request carries an idempotency key."""
        ...

    def local_error(self, ctx: Ctx, failure: LocalFailure) -> R: ...


class AsyncAdapter(Protocol[Ctx, R]):
    """The grpc.aio counterpart of `Adapter`."""

    def send(self, ctx: Ctx, timeout: float, attempt: int) -> Awaitable[R]: ...

    def status(self, result: R) -> Awaitable[Status | None]: ...

    def has_key(self, ctx: Ctx) -> bool: ...

    def local_error(self, ctx: Ctx, failure: LocalFailure) -> R: ...


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Plan:
    """Everything resolved once per method: the hot path only reads these fields."""

    site: CallSite
    timeout: float
    per_attempt: float | None
    max_attempts: int
    retry_codes: frozenset[str]
    wait: Wait
    safe: bool  # NO_SIDE_EFFECTS or IDEMPOTENT: retried without an idempotency key
    breaker: Breaker | None


class Pipeline:
    """Budget, bulkhead and breaker(s) of one target plus the policy that drives them.

    Build one per target and share it between channels to that target (`intercept_channel`
    builds one per channel).
    """

    def __init__(
        self,
        *,
        target: str,
        policy: ClientPolicy,
        listeners: Sequence[Listener] = (),
        clock: Clock = SYSTEM_CLOCK,
        rng: Rng | None = None,
    ) -> None:
        self.target = target
        self.policy = policy
        self.clock = clock
        self._now = clock.monotonic
        self._rng: Rng = rng if rng is not None else random.Random()  # jitter only
        self._listeners = tuple(listeners)
        # First-attempt successes: one call to each listener that offers `call_succeeded`,
        # the event pair to the others.
        notifiers = [success_notifier(listener) for listener in self._listeners]
        self._notifiers = tuple(n for n in notifiers if n is not None)
        self._event_only = tuple(
            listener for listener, n in zip(self._listeners, notifiers, strict=True) if n is None
        )
        self._margin = policy.deadline_margin
        self.budget = RetryBudget(policy.throttle) if policy.throttle is not None else None
        self.bulkhead = Bulkhead(policy.bulkhead) if policy.bulkhead is not None else None
        self._breakers: dict[str, Breaker] = {}
        self._plans: dict[str, Plan] = {}
        self._lock = threading.Lock()

    # -- set-up (once per method) -------------------------------------------------------

    def plan(self, method: str) -> Plan:
        found = self._plans.get(method)
        return found if found is not None else self._new_plan(method)

    def _new_plan(self, method: str) -> Plan:
        with self._lock:
            if method in self._plans:
                return self._plans[method]
            policy = self.policy.for_method(method)
            service, _, name = method[1:].partition("/")
            retry = policy.retry
            plan = Plan(
                site=CallSite(target=self.target, method=method, service=service, name=name),
                timeout=policy.timeout,
                per_attempt=retry.per_attempt_timeout,
                max_attempts=retry.max_attempts,
                retry_codes=retry.retryable_codes,
                wait=retry.delay(),
                safe=self.policy.idempotency_of(method) != Idempotency.UNKNOWN,
                breaker=self._breaker_for(method),
            )
            self._plans[method] = plan
            return plan

    def breaker(self, method: str | None = None) -> Breaker | None:
        """The breaker guarding `method` (or the target's), if breakers are on."""
        return self._breaker_for(method or "")

    def _breaker_for(self, method: str) -> Breaker | None:
        options = self.policy.breaker
        if options is None:
            return None
        scope = method if options.per_method else ""
        name = f"{self.target}{scope}"
        breaker = self._breakers.get(name)
        if breaker is None:
            breaker = Breaker(
                options,
                name=name,
                clock=self.clock,
                on_state_change=lambda old, new: self._emit(
                    BreakerStateChanged(target=self.target, method=scope, old=old, new=new)
                ),
            )
            self._breakers[name] = breaker
        return breaker

    # -- the call ---------------------------------------------------------------------

    def run(
        self, plan: Plan, caller_timeout: float | None, adapter: Adapter[Ctx, R], ctx: Ctx
    ) -> R:
        """Run one unary call through the whole pipeline (sync)."""
        bulkhead = self.bulkhead
        if bulkhead is not None and not bulkhead.try_acquire():
            return adapter.local_error(ctx, self._bulkhead_full(plan))
        try:
            start = now = self._now()
            deadline = self._deadline(plan, now, caller_timeout)
            attempt = backoff_base = 0
            breaker = plan.breaker
            while True:
                attempt += 1
                try:
                    timeout, probe = self._admit(plan, attempt, now, deadline, start)
                except LocalFailure as failure:
                    return adapter.local_error(ctx, failure)
                try:
                    result = adapter.send(ctx, timeout, attempt)
                    status = adapter.status(result)
                except BaseException:
                    # Not an RPC outcome (e.g. a serializer raised): no verdict, free the probe.
                    if breaker is not None and probe:
                        breaker.record(True, None)
                    raise
                if status is None:
                    self._succeeded(plan, probe, attempt, now, timeout, start)
                    return result
                n = attempt - backoff_base
                delay, pushback, now = self._failed(
                    plan, probe, attempt, n, now, timeout, deadline, start, status, adapter, ctx
                )
                if delay is None:
                    return result
                if pushback:
                    backoff_base = attempt
                self.clock.sleep(delay)
                now = self._now()
        finally:
            if bulkhead is not None:
                bulkhead.release()

    async def run_async(
        self, plan: Plan, caller_timeout: float | None, adapter: AsyncAdapter[Ctx, R], ctx: Ctx
    ) -> R:
        """`run` for grpc.aio: the same steps, awaiting the attempt and the backoff."""
        bulkhead = self.bulkhead
        if bulkhead is not None and not bulkhead.try_acquire():
            return adapter.local_error(ctx, self._bulkhead_full(plan))
        try:
            start = now = self._now()
            deadline = self._deadline(plan, now, caller_timeout)
            attempt = backoff_base = 0
            breaker = plan.breaker
            while True:
                attempt += 1
                try:
                    timeout, probe = self._admit(plan, attempt, now, deadline, start)
                except LocalFailure as failure:
                    return adapter.local_error(ctx, failure)
                try:
                    result = await adapter.send(ctx, timeout, attempt)
                    status = await adapter.status(result)
                except BaseException:
                    # Cancelled by the caller: no verdict on the target, give the probe back.
                    if breaker is not None and probe:
                        breaker.record(True, None)
                    raise
                if status is None:
                    self._succeeded(plan, probe, attempt, now, timeout, start)
                    return result
                n = attempt - backoff_base
                delay, pushback, now = self._failed(
                    plan, probe, attempt, n, now, timeout, deadline, start, status, adapter, ctx
                )
                if delay is None:
                    return result
                if pushback:
                    backoff_base = attempt
                await self.clock.sleep_async(delay)
                now = self._now()
        finally:
            if bulkhead is not None:
                bulkhead.release()

    # -- streams: no retries (responses may already be delivered), the rest applies -----

    def open_stream(self, plan: Plan, caller_timeout: float | None) -> tuple[float, bool, float]:
        """Admit a streaming call: returns (timeout, probe, start). Raises LocalFailure."""
        bulkhead = self.bulkhead
        if bulkhead is not None and not bulkhead.try_acquire():
            raise self._bulkhead_full(plan)
        try:
            start = self._now()
            deadline = self._deadline(plan, start, caller_timeout)
            timeout, probe = self._admit(plan, 1, start, deadline, start, per_attempt=False)
        except LocalFailure:
            if bulkhead is not None:
                bulkhead.release()
            raise
        return timeout, probe, start

    def close_stream(
        self, plan: Plan, probe: bool, start: float, timeout: float, code: str
    ) -> None:
        """Account a streaming call that ended with `code` (may run on any thread)."""
        try:
            if code == "OK":
                self._succeeded(plan, probe, 1, start, timeout, start)
            else:
                if plan.breaker is not None:
                    plan.breaker.record(probe, _verdict(code))
                now = self._now()
                if self._listeners:
                    site = plan.site
                    self._emit(
                        AttemptEnded(
                            site=site,
                            attempt=1,
                            code=code,
                            start=start,
                            duration=now - start,
                            timeout=timeout,
                        )
                    )
                    self._emit(
                        CallEnded(
                            site=site,
                            code=code,
                            attempts=1,
                            duration=now - start,
                            outcome=OUTCOME_ERROR,
                        )
                    )
        finally:
            if self.bulkhead is not None:
                self.bulkhead.release()

    # -- steps ------------------------------------------------------------------------

    def _deadline(self, plan: Plan, now: float, caller_timeout: float | None) -> float:
        deadline = now + plan.timeout
        if caller_timeout is not None and caller_timeout < plan.timeout:
            deadline = now + caller_timeout
        inbound = get_inbound_deadline()
        if inbound is not None and inbound - self._margin < deadline:
            deadline = inbound - self._margin
        return deadline

    def _admit(
        self,
        plan: Plan,
        attempt: int,
        now: float,
        deadline: float,
        start: float,
        *,
        per_attempt: bool = True,
    ) -> tuple[float, bool]:
        """Before an attempt: the time it may take, and the breaker's consent (a half-open
        probe or not). Raises the LocalFailure when the deadline is spent or the breaker open."""
        remaining = deadline - now
        if remaining <= 0:
            raise self._no_time(plan, attempt, remaining, start)
        probe = False
        breaker = plan.breaker
        if breaker is not None:
            try:
                probe = breaker.acquire()
            except BreakerOpen as err:
                raise self._breaker_open(plan, attempt, err, start) from None
        limit = plan.per_attempt if per_attempt else None
        return (limit if limit is not None and limit < remaining else remaining), probe

    def _succeeded(
        self, plan: Plan, probe: bool, attempt: int, sent: float, timeout: float, start: float
    ) -> None:
        now = self._now()  # one clock read for the breaker's window and the events
        if plan.breaker is not None:
            plan.breaker.record(probe, False, now)
        if self.budget is not None:
            self.budget.on_success()
        if not self._listeners:
            return
        site = plan.site
        if attempt == 1:  # then sent == start: one duration stands for attempt and call
            duration = now - start
            for notify in self._notifiers:
                try:
                    notify(site, start, duration, timeout)
                except Exception:
                    _log.exception("resilience listener %r failed on a success", notify)
            if self._event_only:
                # Positional: this is the per-call hot path.
                attempt_ended = AttemptEnded(site, 1, OK, start, duration, timeout)
                self._emit(attempt_ended, self._event_only)
                self._emit(CallEnded(site, OK, 1, duration, OUTCOME_SUCCESS), self._event_only)
            return
        self._emit(AttemptEnded(site, attempt, OK, sent, now - sent, timeout))
        self._emit(CallEnded(site, OK, attempt, now - start, OUTCOME_SUCCESS))

    def _failed(
        self,
        plan: Plan,
        probe: bool,
        attempt: int,
        backoff_n: int,
        sent: float,
        timeout: float,
        deadline: float,
        start: float,
        status: Status,
        adapter: Adapter[Ctx, R] | AsyncAdapter[Ctx, R],
        ctx: Ctx,
    ) -> tuple[float | None, bool, float]:
        """Account a failed attempt; returns (delay before the next attempt or None, whether
        the delay is the server's pushback, now)."""
        code, pushback_ms = status
        now = self._now()
        breaker = plan.breaker
        if breaker is not None:
            breaker.record(probe, _verdict(code))
        # A per-attempt timeout that fired before the overall deadline is a retryable failure.
        cut_short = code == DEADLINE_EXCEEDED and timeout < deadline - sent - 1e-6
        retryable = code in plan.retry_codes or cut_short
        budget = self.budget
        if budget is not None and (retryable or pushback_ms is not None):
            budget.on_failure()
        site = plan.site
        if self._listeners:
            self._emit(
                AttemptEnded(
                    site=site,
                    attempt=attempt,
                    code=code,
                    start=sent,
                    duration=now - sent,
                    timeout=timeout,
                )
            )
        delay = self._retry_delay(
            plan, attempt, backoff_n, code, retryable, pushback_ms, now, deadline, adapter, ctx
        )
        if delay is None and self._listeners:
            self._emit(
                CallEnded(
                    site=site,
                    code=code,
                    attempts=attempt,
                    duration=now - start,
                    outcome=OUTCOME_ERROR,
                )
            )
        return delay, pushback_ms is not None, now

    def _retry_delay(
        self,
        plan: Plan,
        attempt: int,
        backoff_n: int,
        code: str,
        retryable: bool,
        pushback_ms: str | None,
        now: float,
        deadline: float,
        adapter: Adapter[Ctx, R] | AsyncAdapter[Ctx, R],
        ctx: Ctx,
    ) -> float | None:
        if not retryable or attempt >= plan.max_attempts:
            return None
        if not plan.safe and not adapter.has_key(ctx):
            return None
        pushback = None
        if pushback_ms is not None:
            pushback = _parse_pushback(pushback_ms)
            if pushback is None:  # negative or malformed: the server says "do not retry"
                return None
        if plan.breaker is not None and plan.breaker.state_name == OPEN:
            return None  # an open breaker stops retries at once
        budget = self.budget
        if budget is not None and not budget.allows_retry():
            if self._listeners:
                self._emit(
                    RetryBudgetExhausted(
                        site=plan.site, attempt=attempt, code=code, tokens=budget.tokens
                    )
                )
            return None
        delay = pushback if pushback is not None else plan.wait(backoff_n, self._rng)
        if now + delay >= deadline:
            return None
        if self._listeners:
            self._emit(
                RetryScheduled(
                    site=plan.site,
                    attempt=attempt,
                    code=code,
                    delay=delay,
                    pushback=pushback_ms is not None,
                )
            )
        return delay

    def _bulkhead_full(self, plan: Plan) -> LocalFailure:
        assert self.bulkhead is not None
        limit = self.bulkhead.limit
        if self._listeners:
            self._emit(BulkheadRejected(site=plan.site, limit=limit))
            self._emit(
                CallEnded(
                    site=plan.site,
                    code=RESOURCE_EXHAUSTED,
                    attempts=0,
                    duration=0.0,
                    outcome=OUTCOME_BULKHEAD_FULL,
                )
            )
        return LocalFailure(
            RESOURCE_EXHAUSTED, f"bulkhead for {self.target} is full: {limit} calls in flight"
        )

    def _no_time(self, plan: Plan, attempt: int, remaining: float, start: float) -> LocalFailure:
        if self._listeners:
            self._emit(
                DeadlineExceededLocally(site=plan.site, attempt=attempt, remaining=remaining)
            )
            self._emit(
                CallEnded(
                    site=plan.site, code=DEADLINE_EXCEEDED, attempts=attempt - 1,
                    duration=self._now() - start, outcome=OUTCOME_DEADLINE,
                )
            )  # fmt: skip
        return LocalFailure(
            DEADLINE_EXCEEDED,
            f"deadline for {plan.site.method} to {self.target} spent before attempt {attempt}",
        )

    def _breaker_open(
        self, plan: Plan, attempt: int, err: BreakerOpen, start: float
    ) -> LocalFailure:
        if self._listeners:
            state = "half-open" if err.probe_in is None else OPEN
            self._emit(
                BreakerRejected(site=plan.site, attempt=attempt, state=state, probe_in=err.probe_in)
            )
            self._emit(
                CallEnded(
                    site=plan.site, code=err.code, attempts=attempt - 1,
                    duration=self._now() - start, outcome=OUTCOME_BREAKER_OPEN,
                )
            )  # fmt: skip
        return err

    def _emit(self, event: Event, listeners: tuple[Listener, ...] | None = None) -> None:
        for listener in self._listeners if listeners is None else listeners:
            try:
                listener(event)
            except Exception:
                # A broken listener must never fail the call it observes.
                _log.exception("resilience listener %r failed on %r", listener, event)


def _verdict(code: str) -> bool | None:
    """What an outcome says about the target's availability; None for "nothing"."""
    if code == CANCELLED:
        return None
    return code in AVAILABILITY_FAILURES


def _parse_pushback(value: str) -> float | None:
    """gRFC A6: a non-negative integer of milliseconds; anything else means do not retry."""
    try:
        ms = int(value)
    except ValueError:
        return None
    return ms / 1000 if ms >= 0 else None
