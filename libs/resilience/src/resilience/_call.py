"""One logical call's progress through the pipeline: sans-IO, it decides and never sends or sleeps.

As tenacity's `RetryCallState` and `iter()`, a loop asks the state what to do next and does it:

    call = CallState(plan, caller_timeout)                # bulkhead slot, overall deadline
    try:
        while (timeout := call.next_attempt()) is not None:   # time left? breaker consent?
            result, status = send(timeout)                # I/O: the loop's
            delay = call.attempt_ended(status)            # account it; retry, after `delay`?
            if delay is None:
                return result                             # success, or the failure stands
            sleep(delay)                                  # I/O: the loop's
    except BaseException:
        call.close()                                      # give back what it still holds
        raise
    return local_error(call.failure)                      # refused without sending

`Pipeline.run` and `Pipeline.run_async` are that loop, without and with `await`. A streaming call
is the same state with a one-attempt plan, ended by `finish(code)` from grpc's callback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from ._backoff import Wait
from ._breaker import OPEN, Breaker, BreakerOpen
from ._budget import Budget
from ._bulkhead import Bulkhead
from ._clock import Rng
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
    BulkheadRejected,
    CallEnded,
    CallSite,
    DeadlineExceededLocally,
    Event,
    Listener,
    RetryBudgetExhausted,
    RetryScheduled,
    SuccessNotifier,
)

_log = logging.getLogger(__name__)

# A failed attempt as the adapter reports it: (status code name, grpc-retry-pushback-ms or None,
# whether the request carries an idempotency key).
Status = tuple[str, str | None, bool]


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Plan:
    """Everything a call of one method goes through, resolved once: the hot path only reads it."""

    site: CallSite
    timeout: float
    per_attempt: float | None
    max_attempts: int
    retry_codes: frozenset[str]
    wait: Wait
    safe: bool  # NO_SIDE_EFFECTS or IDEMPOTENT: retried without an idempotency key
    breaker: Breaker | None
    # The target's, shared by all its methods.
    bulkhead: Bulkhead | None
    budget: Budget | None
    count_call: Callable[[float], None] | None  # the budget's `on_request`, when it has one
    deadline_margin: float
    now: Callable[[], float]
    rng: Rng
    listeners: tuple[Listener, ...]
    notifiers: tuple[SuccessNotifier, ...]  # `call_succeeded` of the listeners that offer it
    event_only: tuple[Listener, ...]  # the others, which get a first-attempt success as events


class CallState:
    """One call of a `Plan`: its deadline, attempt number, times and the breaker's consent.

    One driver at a time, from `__init__` until `next_attempt` or `attempt_ended` says the call
    is over (or `close()` after an exception); not reusable.
    """

    __slots__ = (
        "_backoff_from",
        "_failure",
        "_probe",
        "_slot",
        "attempt",
        "deadline",
        "plan",
        "sent",
        "start",
        "timeout",
    )

    def __init__(self, plan: Plan, caller_timeout: float | None) -> None:
        self.plan = plan
        self._failure: LocalFailure | None = None
        self._probe = False  # the attempt in flight is the half-open breaker's probe
        self._backoff_from = 0  # backoff counts retries since the last server pushback
        self.attempt = 0
        bulkhead = self._slot = plan.bulkhead
        if bulkhead is not None:
            try:
                bulkhead.take()
            except IndexError:
                self._slot = None
                self._failure = self._bulkhead_full(bulkhead)
                return
        self.start = now = plan.now()
        # The overall deadline: the method's timeout, the caller's if shorter, and the inbound
        # call's minus the margin that leaves this service time to answer.
        deadline = now + plan.timeout
        if caller_timeout is not None and caller_timeout < plan.timeout:
            deadline = now + caller_timeout
        inbound = get_inbound_deadline()
        if inbound is not None and inbound - plan.deadline_margin < deadline:
            deadline = inbound - plan.deadline_margin
        self.deadline = deadline

    @property
    def failure(self) -> LocalFailure:
        """Why `next_attempt()` returned None: bulkhead full, deadline spent or breaker open."""
        assert self._failure is not None, "next_attempt() has not refused an attempt"
        return self._failure

    def next_attempt(self) -> float | None:
        """Admit the next attempt: the timeout to send it with, or None if it must not be sent."""
        if self._failure is not None:
            return None
        plan = self.plan
        attempt = self.attempt = self.attempt + 1
        now = self.sent = self.start if attempt == 1 else plan.now()
        remaining = self.deadline - now
        if remaining <= 0:
            self._failure = self._no_time(remaining)
            self._failure.attempts_sent = attempt - 1
            self._release()
            return None
        breaker = plan.breaker
        if breaker is not None and not breaker.closed:  # closed: no probe, nothing to ask
            try:
                self._probe = breaker.acquire()
            except BreakerOpen as err:
                self._failure = self._breaker_open(err)
                self._failure.attempts_sent = attempt - 1
                self._release()
                return None
        if attempt == 1 and plan.count_call is not None:
            plan.count_call(now)
        limit = plan.per_attempt
        timeout = self.timeout = limit if limit is not None and limit < remaining else remaining
        return timeout

    def attempt_ended(self, status: Status | None) -> float | None:
        """Account the attempt's outcome (None: success). Returns the delay before the next
        attempt, or None when the call is over and this attempt's result is its answer."""
        plan = self.plan
        probe = self._probe
        if probe:
            self._probe = False
        if status is not None:
            return self._failed(status, probe)
        now = plan.now()  # one clock read for the breaker's window and the events
        breaker = plan.breaker
        if breaker is not None:
            breaker.record(probe, False, now)
        budget = plan.budget
        if budget is not None and not budget.full:
            budget.on_success()
        slot = self._slot  # `_release()`, inline on the per-call path
        if slot is not None:
            self._slot = None
            slot.release()
        if not plan.listeners:
            return None
        site, start = plan.site, self.start
        if self.attempt == 1:  # then sent == start: one duration stands for attempt and call
            duration = now - start
            for notify in plan.notifiers:
                try:
                    notify(site, start, duration, self.timeout)
                except Exception:
                    _log.exception("resilience listener %r failed on a success", notify)
            if plan.event_only:
                # Positional: this is the per-call hot path.
                attempt_ended = AttemptEnded(site, 1, OK, start, duration, self.timeout)
                emit(plan.event_only, attempt_ended)
                emit(plan.event_only, CallEnded(site, OK, 1, duration, OUTCOME_SUCCESS))
            return None
        sent = self.sent
        emit(plan.listeners, AttemptEnded(site, self.attempt, OK, sent, now - sent, self.timeout))
        emit(plan.listeners, CallEnded(site, OK, self.attempt, now - start, OUTCOME_SUCCESS))
        return None

    def finish(self, code: str) -> None:
        """Account the only attempt of a streaming call, which ended with `code`. May run on
        any thread (grpc's done callback)."""
        try:
            self.attempt_ended(None if code == OK else (code, None, False))
        finally:
            self.close()

    def close(self) -> None:
        """Give back what the call still holds when it ends by an exception (cancelled, a
        serializer raised): a probe still out, without a verdict, and the bulkhead slot.
        A call that ended through `next_attempt` or `attempt_ended` holds nothing."""
        breaker = self.plan.breaker
        if self._probe and breaker is not None:
            self._probe = False
            breaker.record(True, None)
        self._release()

    def _release(self) -> None:
        slot = self._slot
        if slot is not None:
            self._slot = None
            slot.release()

    # -- after a failed attempt ----------------------------------------------------------

    def _failed(self, status: Status, probe: bool) -> float | None:
        code, pushback_ms, keyed = status
        plan = self.plan
        now = plan.now()
        if plan.breaker is not None:
            plan.breaker.record(probe, _verdict(code))
        # A per-attempt timeout that fired before the overall deadline is a retryable failure.
        cut_short = code == DEADLINE_EXCEEDED and self.timeout < self.deadline - self.sent - 1e-6
        retryable = code in plan.retry_codes or cut_short
        if plan.budget is not None and (retryable or pushback_ms is not None):
            plan.budget.on_failure()
        if plan.listeners:
            emit(
                plan.listeners,
                AttemptEnded(
                    site=plan.site,
                    attempt=self.attempt,
                    code=code,
                    start=self.sent,
                    duration=now - self.sent,
                    timeout=self.timeout,
                ),
            )
        delay = self._retry_delay(code, pushback_ms, keyed, now) if retryable else None
        if delay is None:
            self._release()
            if plan.listeners:
                emit(
                    plan.listeners,
                    CallEnded(
                        site=plan.site,
                        code=code,
                        attempts=self.attempt,
                        duration=now - self.start,
                        outcome=OUTCOME_ERROR,
                    ),
                )
        elif pushback_ms is not None:
            self._backoff_from = self.attempt  # after pushback, backoff starts from its initial
        return delay

    def _retry_delay(
        self, code: str, pushback_ms: str | None, keyed: bool, now: float
    ) -> float | None:
        """The wait before retrying a retryable failure, or None when the failure stands."""
        plan = self.plan
        if self.attempt >= plan.max_attempts:
            return None
        if not plan.safe and not keyed:
            return None
        pushback = None
        if pushback_ms is not None:
            pushback = _parse_pushback(pushback_ms)
            if pushback is None:  # negative or malformed: the server says "do not retry"
                return None
        if plan.breaker is not None and plan.breaker.state_name == OPEN:
            return None  # an open breaker stops retries at once
        if pushback is not None:
            delay = pushback
        else:
            delay = plan.wait(self.attempt - self._backoff_from, plan.rng)
        if now + delay >= self.deadline:
            return None
        # Last: a ratio budget counts the retry it allows, so only a retry that will go asks.
        budget = plan.budget
        if budget is not None and not budget.try_retry(now):
            if plan.listeners:
                emit(
                    plan.listeners,
                    RetryBudgetExhausted(
                        site=plan.site, attempt=self.attempt, code=code, tokens=budget.tokens
                    ),
                )
            return None
        if plan.listeners:
            emit(
                plan.listeners,
                RetryScheduled(
                    site=plan.site,
                    attempt=self.attempt,
                    code=code,
                    delay=delay,
                    pushback=pushback_ms is not None,
                ),
            )
        return delay

    # -- refused without sending ---------------------------------------------------------

    def _bulkhead_full(self, bulkhead: Bulkhead) -> LocalFailure:
        plan = self.plan
        if plan.listeners:
            emit(plan.listeners, BulkheadRejected(site=plan.site, limit=bulkhead.limit))
            emit(
                plan.listeners,
                CallEnded(
                    site=plan.site,
                    code=RESOURCE_EXHAUSTED,
                    attempts=0,
                    duration=0.0,
                    outcome=OUTCOME_BULKHEAD_FULL,
                ),
            )
        return LocalFailure(
            RESOURCE_EXHAUSTED,
            f"bulkhead for {plan.site.target} is full: {bulkhead.limit} calls in flight",
        )

    def _no_time(self, remaining: float) -> LocalFailure:
        plan = self.plan
        if plan.listeners:
            site = plan.site
            emit(
                plan.listeners,
                DeadlineExceededLocally(site=site, attempt=self.attempt, remaining=remaining),
            )
            emit(
                plan.listeners,
                CallEnded(
                    site=site, code=DEADLINE_EXCEEDED, attempts=self.attempt - 1,
                    duration=plan.now() - self.start, outcome=OUTCOME_DEADLINE,
                ),
            )  # fmt: skip
        return LocalFailure(
            DEADLINE_EXCEEDED,
            f"deadline for {plan.site.method} to {plan.site.target} spent"
            f" before attempt {self.attempt}",
        )

    def _breaker_open(self, err: BreakerOpen) -> LocalFailure:
        plan = self.plan
        if plan.listeners:
            site = plan.site
            state = "half-open" if err.probe_in is None else OPEN
            emit(
                plan.listeners,
                BreakerRejected(
                    site=site, attempt=self.attempt, state=state, probe_in=err.probe_in
                ),
            )
            emit(
                plan.listeners,
                CallEnded(
                    site=site, code=err.code, attempts=self.attempt - 1,
                    duration=plan.now() - self.start, outcome=OUTCOME_BREAKER_OPEN,
                ),
            )  # fmt: skip
        return err


def emit(listeners: tuple[Listener, ...], event: Event) -> None:
    for listener in listeners:
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
