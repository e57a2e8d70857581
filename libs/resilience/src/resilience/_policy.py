"""Frozen, validated option objects: what one client does for each method of its target."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ._backoff import Wait, WaitFullJitter
from ._breaker import BreakerOptions
from ._budget import RatioBudgetOptions, ThrottleOptions
from ._bulkhead import BulkheadOptions
from ._codes import ALL_CODES, NEVER_RETRYABLE, UNAVAILABLE
from ._errors import PolicyError

DEFAULT_TIMEOUT = 5.0
DEFAULT_MAX_ATTEMPTS = 3
MAX_ATTEMPTS_LIMIT = 5  # gRFC A6 clamps maxAttempts to 5
DEFAULT_INITIAL_BACKOFF = 0.05
DEFAULT_MAX_BACKOFF = 1.0
DEFAULT_BACKOFF_MULTIPLIER = 2.0
DEFAULT_RETRYABLE_CODES = frozenset({UNAVAILABLE})
DEFAULT_DEADLINE_MARGIN = 0.02


class Idempotency(enum.IntEnum):
    """`google.protobuf.MethodOptions.IdempotencyLevel`, same numbers."""

    UNKNOWN = 0
    NO_SIDE_EFFECTS = 1
    IDEMPOTENT = 2


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryOptions:
    """`retryPolicy` from the gRPC service config, plus `perAttemptRecvTimeout` (gRFC A6)."""

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    initial_backoff: float = DEFAULT_INITIAL_BACKOFF
    max_backoff: float = DEFAULT_MAX_BACKOFF
    backoff_multiplier: float = DEFAULT_BACKOFF_MULTIPLIER
    retryable_codes: frozenset[str] = DEFAULT_RETRYABLE_CODES
    per_attempt_timeout: float | None = None
    wait: Wait | None = None  # default: full jitter from the three backoff numbers

    def __post_init__(self) -> None:
        if not 1 <= self.max_attempts <= MAX_ATTEMPTS_LIMIT:
            raise PolicyError(
                "maxAttempts", f"an integer in [1, {MAX_ATTEMPTS_LIMIT}]", self.max_attempts
            )
        for code in sorted(self.retryable_codes):
            if code not in ALL_CODES or code == "OK":
                raise PolicyError("retryableStatusCodes", "gRPC status code names", code)
            if code in NEVER_RETRYABLE:
                raise PolicyError(
                    "retryableStatusCodes",
                    f"codes other than {', '.join(sorted(NEVER_RETRYABLE))}",
                    code,
                )
        if self.per_attempt_timeout is not None and not 0.001 <= self.per_attempt_timeout <= 3600:
            raise PolicyError(
                "perAttemptRecvTimeout", "in [0.001, 3600] seconds", self.per_attempt_timeout
            )
        if self.wait is None:
            # Validates the backoff numbers and names their config fields on error.
            wait = WaitFullJitter(
                initial=self.initial_backoff,
                maximum=self.max_backoff,
                multiplier=self.backoff_multiplier,
            )
            object.__setattr__(self, "wait", wait)

    def delay(self) -> Wait:
        assert self.wait is not None
        return self.wait


NO_RETRY = RetryOptions(max_attempts=1)
DEFAULT_THROTTLE = ThrottleOptions()
DEFAULT_BREAKER = BreakerOptions()
DEFAULT_BULKHEAD = BulkheadOptions()


@dataclass(frozen=True, slots=True, kw_only=True)
class MethodPolicy:
    """What applies to one method: its timeout and its retry policy."""

    timeout: float = DEFAULT_TIMEOUT
    retry: RetryOptions = NO_RETRY

    def __post_init__(self) -> None:
        if not 0.001 <= self.timeout <= 86_400:
            raise PolicyError("timeout", "in [0.001, 86400] seconds", self.timeout)


DEFAULT_METHOD = MethodPolicy()


def _frozen(mapping: Mapping[str, object]) -> Mapping[str, object]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientPolicy:
    """Everything a client applies to one target. `None` turns a policy off.

    Method keys are "/package.Service/Method"; service keys "package.Service". The most
    specific entry wins: method, then service, then `default`.
    """

    default: MethodPolicy = DEFAULT_METHOD
    services: Mapping[str, MethodPolicy] = field(default_factory=dict)
    methods: Mapping[str, MethodPolicy] = field(default_factory=dict)
    idempotency: Mapping[str, Idempotency] = field(default_factory=dict)
    throttle: ThrottleOptions | None = DEFAULT_THROTTLE
    #: A ratio budget instead of A6 throttling (set `throttle=None`): see resilience._budget.
    retry_budget: RatioBudgetOptions | None = None
    breaker: BreakerOptions | None = DEFAULT_BREAKER
    bulkhead: BulkheadOptions | None = DEFAULT_BULKHEAD
    deadline_margin: float = DEFAULT_DEADLINE_MARGIN

    def __post_init__(self) -> None:
        if self.retry_budget is not None and self.throttle is not None:
            raise PolicyError(
                "retryBudget",
                "the only retry budget (drop retryThrottling, or set it null)",
                "both",
            )
        if not 0 <= self.deadline_margin <= 10:
            raise PolicyError("deadlineMargin", "in [0, 10] seconds", self.deadline_margin)
        for key in self.methods:
            if not key.startswith("/") or key.count("/") != 2:
                raise PolicyError("methods", "keys like '/package.Service/Method'", key)
        object.__setattr__(self, "services", _frozen(self.services))
        object.__setattr__(self, "methods", _frozen(self.methods))
        object.__setattr__(self, "idempotency", _frozen(self.idempotency))

    def for_method(self, method: str) -> MethodPolicy:
        found = self.methods.get(method)
        if found is not None:
            return found
        service = method[1:].partition("/")[0]
        return self.services.get(service, self.default)

    def idempotency_of(self, method: str) -> Idempotency:
        return self.idempotency.get(method, Idempotency.UNKNOWN)
