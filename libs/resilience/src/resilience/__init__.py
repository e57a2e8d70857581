"""Deadlines, retries with a budget, circuit breakers and bulkheads for gRPC clients.

Build a `Pipeline(target=..., policy=..., listeners=...)` per target, then wrap channels with
it: `intercept_channel` / `intercept_aio_channel`, or `sync_interceptors` / `aio_interceptors`
to compose with other interceptors. Order, fixed: bulkhead -> overall deadline -> circuit
breaker -> retry (with budget) -> per-attempt timeout. See README.md.
"""

from ._aio_client import ResilientAioChannel, aio_interceptors, intercept_aio_channel
from ._backoff import Wait, WaitFixed, WaitFullJitter
from ._breaker import (
    AnyOf,
    Breaker,
    BreakerOpen,
    BreakerOptions,
    ConsecutiveFailures,
    FailureRate,
    TripCondition,
)
from ._budget import Budget, RatioBudgetOptions, RatioRetryBudget, RetryBudget, ThrottleOptions
from ._bulkhead import Bulkhead, BulkheadOptions
from ._client import LocalRpcError, ResilientChannel, intercept_channel, sync_interceptors
from ._clock import SYSTEM_CLOCK, Clock, Rng, SystemClock
from ._codes import NEVER_RETRYABLE as NEVER_RETRYABLE
from ._config import ENV_OVERRIDES, ENV_POLICY_FILE, build_policy, load_policy
from ._deadline import deadline_scope, remaining_time
from ._errors import LocalFailure, PolicyError, never_sent
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
    RecordingListener,
    RetryBudgetExhausted,
    RetryScheduled,
    SuccessListener,
)
from ._grpc_common import IDEMPOTENCY_KEY_FIELD, IDEMPOTENCY_KEY_HEADER, PUSHBACK_HEADER
from ._pipeline import Pipeline
from ._policy import ClientPolicy, Idempotency, MethodPolicy, RetryOptions
from ._prometheus import PrometheusListener
from ._server import AioDeadlineServerInterceptor, DeadlineServerInterceptor

__all__ = [
    "ENV_OVERRIDES",
    "ENV_POLICY_FILE",
    "IDEMPOTENCY_KEY_FIELD",
    "IDEMPOTENCY_KEY_HEADER",
    "OUTCOME_BREAKER_OPEN",
    "OUTCOME_BULKHEAD_FULL",
    "OUTCOME_DEADLINE",
    "OUTCOME_ERROR",
    "OUTCOME_SUCCESS",
    "PUSHBACK_HEADER",
    "SYSTEM_CLOCK",
    "AioDeadlineServerInterceptor",
    "AnyOf",
    "AttemptEnded",
    "Breaker",
    "BreakerOpen",
    "BreakerOptions",
    "BreakerRejected",
    "BreakerStateChanged",
    "Budget",
    "Bulkhead",
    "BulkheadOptions",
    "BulkheadRejected",
    "CallEnded",
    "CallSite",
    "ClientPolicy",
    "Clock",
    "ConsecutiveFailures",
    "DeadlineExceededLocally",
    "DeadlineServerInterceptor",
    "Event",
    "FailureRate",
    "Idempotency",
    "Listener",
    "LocalFailure",
    "LocalRpcError",
    "MethodPolicy",
    "Pipeline",
    "PolicyError",
    "PrometheusListener",
    "RatioBudgetOptions",
    "RatioRetryBudget",
    "RecordingListener",
    "ResilientAioChannel",
    "ResilientChannel",
    "RetryBudget",
    "RetryBudgetExhausted",
    "RetryOptions",
    "RetryScheduled",
    "Rng",
    "SuccessListener",
    "SystemClock",
    "ThrottleOptions",
    "TripCondition",
    "Wait",
    "WaitFixed",
    "WaitFullJitter",
    "aio_interceptors",
    "build_policy",
    "deadline_scope",
    "intercept_aio_channel",
    "intercept_channel",
    "load_policy",
    "never_sent",
    "remaining_time",
    "sync_interceptors",
]
