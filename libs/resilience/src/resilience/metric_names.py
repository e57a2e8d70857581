"""Every metric and label name the library exports, in one place (dashboards, alerts, tests)."""

from __future__ import annotations

# Labels: low cardinality only, never an id.
TARGET = "target"
METHOD = "method"  # "/package.Service/Method"
CODE = "code"  # gRPC status code name
OUTCOME = "outcome"  # see resilience.OUTCOME_* and breaker state names

CALLS = "resilience_client_calls_total"  # target, method, code, outcome
ATTEMPTS = "resilience_client_attempts_total"  # target, method, code
RETRIES = "resilience_client_retries_total"  # target, method, code (of the failed attempt)
RETRY_BUDGET_EXHAUSTED = "resilience_client_retry_budget_exhausted_total"  # target, method
REJECTIONS = "resilience_client_rejections_total"  # target, method, outcome
CALL_DURATION = "resilience_client_call_duration_seconds"  # target, method, outcome
BREAKER_STATE = "resilience_client_breaker_state"  # target, method; 0 closed, 1 half-open, 2 open
BREAKER_TRANSITIONS = (
    "resilience_client_breaker_transitions_total"  # target, method, outcome=new state
)

BREAKER_STATE_VALUES = {"closed": 0, "half-open": 1, "open": 2}
