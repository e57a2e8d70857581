"""The whole pipeline for one target, with no grpc import.

Per attempt, in this order: bulkhead (once per call) -> overall deadline -> circuit breaker ->
retry (with budget) -> per-attempt timeout. The deadline and the breaker are asked before every
attempt, retries included, so the breaker counts attempts; after a failed attempt the retry
policy, the server's pushback, an open breaker, the budget and the deadline decide whether
another one goes.

The decisions live in `CallState` (`_call.py`); the two loops here only do the I/O, through an
`Adapter` that knows how to send one attempt through grpc and read its status. So everything is
tested with a fake clock and a fake adapter.
"""

from __future__ import annotations

import dataclasses
import random
import threading
from collections.abc import Awaitable, Sequence
from typing import Protocol, TypeVar

from ._breaker import Breaker
from ._budget import Budget, RatioRetryBudget, RetryBudget
from ._bulkhead import Bulkhead
from ._call import CallState, Plan, Status, emit
from ._clock import SYSTEM_CLOCK, Clock, Rng
from ._errors import LocalFailure
from ._events import BreakerStateChanged, CallSite, Listener, success_notifier
from ._policy import ClientPolicy, Idempotency

Ctx = TypeVar("Ctx", contravariant=True)
Result = TypeVar("Result", covariant=True)
R = TypeVar("R")


class Adapter(Protocol[Ctx, Result]):
    """How one way into grpc sends an attempt and reads its outcome (sync grpc)."""

    def send(self, ctx: Ctx, timeout: float, attempt: int) -> tuple[Result, Status | None]:
        """Send one attempt: what the caller gets, and None for success or the failure's
        `Status` (its code, the server's pushback, whether the request carries a key)."""
        ...

    def local_error(self, ctx: Ctx, failure: LocalFailure) -> Result: ...


class AsyncAdapter(Protocol[Ctx, Result]):
    """The grpc.aio counterpart of `Adapter`."""

    def send(
        self, ctx: Ctx, timeout: float, attempt: int
    ) -> Awaitable[tuple[Result, Status | None]]: ...

    def local_error(self, ctx: Ctx, failure: LocalFailure) -> Result: ...


class Pipeline:
    """Budget, bulkhead and breaker(s) of one target plus the policy that drives them.

    Build one per target and share it between the channels to that target.
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
        self._rng: Rng = rng if rng is not None else random.Random()  # jitter only
        self._listeners = tuple(listeners)
        self.budget: Budget | None = None
        if policy.retry_budget is not None:
            self.budget = RatioRetryBudget(policy.retry_budget, clock.monotonic())
        elif policy.throttle is not None:
            self.budget = RetryBudget(policy.throttle)
        self.bulkhead = Bulkhead(policy.bulkhead) if policy.bulkhead is not None else None
        self._breakers: dict[str, Breaker] = {}
        self._plans: dict[str | bytes, Plan] = {}
        self._stream_plans: dict[str | bytes, Plan] = {}
        self._lock = threading.Lock()

    # -- set-up (once per method) -------------------------------------------------------

    def plan(self, method: str | bytes) -> Plan:
        """The plan of unary calls to `method` ("/package.Service/Method", str or bytes)."""
        found = self._plans.get(method)
        return found if found is not None else self._new_plan(method)[0]

    def stream_plan(self, method: str | bytes) -> Plan:
        """The plan of streaming calls to `method`: one attempt, no per-attempt timeout
        (responses may already be delivered, so a stream is never retried)."""
        found = self._stream_plans.get(method)
        return found if found is not None else self._new_plan(method)[1]

    def _new_plan(self, key: str | bytes) -> tuple[Plan, Plan]:
        with self._lock:
            if key in self._plans:
                return self._plans[key], self._stream_plans[key]
            method = key.decode() if isinstance(key, bytes) else key
            if method in self._plans:  # the same method, seen before under the other type
                plan, stream = self._plans[method], self._stream_plans[method]
            else:
                plan = self._build_plan(method)
                stream = dataclasses.replace(
                    plan, per_attempt=None, max_attempts=1, retry_codes=frozenset()
                )
            self._plans[key] = self._plans[method] = plan
            self._stream_plans[key] = self._stream_plans[method] = stream
            return plan, stream

    def _build_plan(self, method: str) -> Plan:
        policy = self.policy.for_method(method)
        service, _, name = method[1:].partition("/")
        retry = policy.retry
        notifiers = [success_notifier(listener) for listener in self._listeners]
        return Plan(
            site=CallSite(target=self.target, method=method, service=service, name=name),
            timeout=policy.timeout,
            per_attempt=retry.per_attempt_timeout,
            max_attempts=retry.max_attempts,
            retry_codes=retry.retryable_codes,
            wait=retry.delay(),
            safe=self.policy.idempotency_of(method) != Idempotency.UNKNOWN,
            breaker=self._breaker_for(method),
            bulkhead=self.bulkhead,
            budget=self.budget,
            count_call=None if self.budget is None else self.budget.on_request,
            deadline_margin=self.policy.deadline_margin,
            now=self.clock.monotonic,
            rng=self._rng,
            listeners=self._listeners,
            notifiers=tuple(n for n in notifiers if n is not None),
            event_only=tuple(
                listener
                for listener, n in zip(self._listeners, notifiers, strict=True)
                if n is None
            ),
        )

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
                on_state_change=lambda old, new: emit(
                    self._listeners,
                    BreakerStateChanged(target=self.target, method=scope, old=old, new=new),
                ),
            )
            self._breakers[name] = breaker
        return breaker

    # -- the call: two loops around one CallState, differing only in `await` ------------

    def run(
        self, plan: Plan, caller_timeout: float | None, adapter: Adapter[Ctx, R], ctx: Ctx
    ) -> R:
        """Run one unary call through the whole pipeline (sync)."""
        call = CallState(plan, caller_timeout)
        try:
            while (timeout := call.next_attempt()) is not None:
                result, status = adapter.send(ctx, timeout, call.attempt)
                delay = call.attempt_ended(status)
                if delay is None:
                    return result
                self.clock.sleep(delay)
        except BaseException:
            call.close()
            raise
        return adapter.local_error(ctx, call.failure)

    async def run_async(
        self, plan: Plan, caller_timeout: float | None, adapter: AsyncAdapter[Ctx, R], ctx: Ctx
    ) -> R:
        """Run one unary call through the whole pipeline (grpc.aio)."""
        call = CallState(plan, caller_timeout)
        try:
            while (timeout := call.next_attempt()) is not None:
                result, status = await adapter.send(ctx, timeout, call.attempt)
                delay = call.attempt_ended(status)
                if delay is None:
                    return result
                await self.clock.sleep_async(delay)
        except BaseException:
            call.close()
            raise
        return adapter.local_error(ctx, call.failure)

    def open_stream(self, plan: Plan, caller_timeout: float | None) -> CallState:
        """Admit a streaming call (`plan` from `stream_plan`), or raise the LocalFailure that
        refused it. Send it with `call.timeout`; report its end with `call.finish(code)`."""
        call = CallState(plan, caller_timeout)
        if call.next_attempt() is None:
            raise call.failure
        return call
