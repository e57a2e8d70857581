from __future__ import annotations

import json
from pathlib import Path

import pytest

from mesh.payment.v1 import payment_pb2
from resilience import (
    ConsecutiveFailures,
    FailureRate,
    Idempotency,
    PolicyError,
    RatioBudgetOptions,
    build_policy,
    load_policy,
)
from resilience._breaker import AnyOf

PAYMENT = payment_pb2.DESCRIPTOR.services_by_name["PaymentService"]

YAML = """
methodConfig:
  - name: [{}]
    timeout: 2s
    retryPolicy:
      maxAttempts: 3
      initialBackoff: 0.05s
      maxBackoff: 1s
      backoffMultiplier: 2
      retryableStatusCodes: [UNAVAILABLE]
  - name: [{service: mesh.payment.v1.PaymentService}]
    timeout: 3s
  - name: [{service: mesh.payment.v1.PaymentService, method: Charge}]
    retryPolicy:
      maxAttempts: 2
      retryableStatusCodes: [UNAVAILABLE, RESOURCE_EXHAUSTED]
      perAttemptRecvTimeout: 500ms
retryThrottling: {maxTokens: 20, tokenRatio: 0.2}
circuitBreaker:
  consecutiveFailures: 4
  failureRate: {threshold: 0.5, window: 10s, minimumCalls: 20}
  resetTimeout: 2s
  halfOpenMaxCalls: 2
bulkhead: {maxConcurrentCalls: 32}
deadlineMargin: 10ms
"""


def write(tmp_path: Path, text: str, name: str = "policy.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_yaml_with_per_method_overrides(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, YAML), env={}, descriptors=[PAYMENT])
    assert policy.default.timeout == 2
    assert policy.default.retry.max_attempts == 3
    refund = policy.for_method("/mesh.payment.v1.PaymentService/Refund")
    assert refund.timeout == 3
    assert refund.retry.max_attempts == 3  # inherited from the default entry
    charge = policy.for_method("/mesh.payment.v1.PaymentService/Charge")
    assert charge.timeout == 3  # from the service entry
    assert charge.retry.max_attempts == 2
    assert charge.retry.retryable_codes == {"UNAVAILABLE", "RESOURCE_EXHAUSTED"}
    assert charge.retry.per_attempt_timeout == 0.5
    assert policy.for_method("/other.Svc/Get").timeout == 2
    assert policy.throttle is not None
    assert policy.throttle.max_tokens == 20
    assert policy.bulkhead is not None
    assert policy.bulkhead.max_concurrent_calls == 32
    assert policy.breaker is not None
    assert policy.breaker.half_open_max_calls == 2
    assert policy.breaker.trip == AnyOf(
        first=ConsecutiveFailures(threshold=4),
        second=FailureRate(threshold=0.5, window=10, minimum_calls=20),
    )
    assert policy.deadline_margin == pytest.approx(0.01)


def test_idempotency_comes_from_the_descriptors() -> None:
    policy = build_policy({}, env={}, descriptors=[PAYMENT])
    assert policy.idempotency_of("/mesh.payment.v1.PaymentService/Charge") == Idempotency.IDEMPOTENT
    assert (
        policy.idempotency_of("/mesh.payment.v1.PaymentService/GetPayment")
        == Idempotency.NO_SIDE_EFFECTS
    )
    assert policy.idempotency_of("/other.Svc/Do") == Idempotency.UNKNOWN


def test_json_file_and_null_turns_a_policy_off(tmp_path: Path) -> None:
    doc = {"circuitBreaker": None, "bulkhead": None, "retryThrottling": None}
    policy = load_policy(write(tmp_path, json.dumps(doc), "p.json"), env={})
    assert policy.breaker is None
    assert policy.bulkhead is None
    assert policy.throttle is None


def test_no_file_gives_defaults_with_every_policy_on() -> None:
    policy = load_policy(None, env={})
    assert policy.default.timeout == 5
    assert policy.breaker is not None
    assert policy.bulkhead is not None
    assert policy.throttle is not None


def test_env_overrides_and_policy_file_from_env(tmp_path: Path) -> None:
    path = write(tmp_path, YAML)
    env = {
        "RESILIENCE_POLICY_FILE": path,
        "RESILIENCE_TIMEOUT": "1.5s",
        "RESILIENCE_MAX_ATTEMPTS": "4",
        "RESILIENCE_BULKHEAD_MAX_CONCURRENT_CALLS": "8",
        "RESILIENCE_BREAKER_RESET_TIMEOUT": "250ms",
    }
    policy = load_policy(None, env=env)
    assert policy.default.timeout == 1.5
    assert policy.default.retry.max_attempts == 4
    assert policy.bulkhead is not None
    assert policy.bulkhead.max_concurrent_calls == 8
    assert policy.breaker is not None
    assert policy.breaker.reset_timeout == 0.25


def test_env_override_creates_a_retry_policy_when_there_is_none() -> None:
    policy = build_policy({}, env={"RESILIENCE_MAX_ATTEMPTS": "3"})
    assert policy.default.retry.max_attempts == 3
    assert policy.default.retry.retryable_codes == {"UNAVAILABLE"}


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (
            {"methodConfig": [{"name": [{}], "retryPolicy": {"maxAttempts": 9}}]},
            r"methodConfig\[default\].retryPolicy.maxAttempts: "
            r"must be an integer in \[1, 5\], got 9",
        ),
        (
            {"methodConfig": [{"name": [{}], "timeout": "-1s"}]},
            r"methodConfig\[default\].timeout: must be in \[0.001, 86400\] seconds, got -1.0",
        ),
        (
            {"methodConfig": [{"name": [{"service": "a.B"}], "timeout": "soon"}]},
            r"methodConfig\[0\].timeout: must be a duration",
        ),
        (
            {
                "methodConfig": [
                    {"name": [{}], "retryPolicy": {"retryableStatusCodes": ["INVALID_ARGUMENT"]}}
                ]
            },
            r"retryPolicy.retryableStatusCodes: must be codes other than .*got 'INVALID_ARGUMENT'",
        ),
        (
            {
                "methodConfig": [
                    {"name": [{}], "retryPolicy": {"retryableStatusCodes": ["SOMETIMES"]}}
                ]
            },
            r"retryableStatusCodes: must be gRPC status code names, got 'SOMETIMES'",
        ),
        (
            {"retryThrottling": {"tokenRatio": 5}},
            r"retryThrottling.tokenRatio: must be in \(0, 1\], got 5.0",
        ),
        (
            {"circuitBreaker": {"halfOpenMaxCalls": 0}},
            r"circuitBreaker.halfOpenMaxCalls: must be an integer",
        ),
        (
            {
                "circuitBreaker": {
                    "failureRate": {"threshold": 2, "window": "1s", "minimumCalls": 1}
                }
            },
            r"circuitBreaker.failureRate.threshold: must be in \(0, 1\], got 2.0",
        ),
        (
            {"bulkhead": {"maxConcurrentCalls": "many"}},
            r"bulkhead.maxConcurrentCalls: must be an integer",
        ),
        ({"retryThrotling": {}}, r"retryThrotling: must be one of"),
        (
            {"retryBudget": {"budgetPercent": 120}},
            r"retryBudget.budgetPercent: must be in \[0, 100\], got 120.0",
        ),
        (
            {"retryBudget": {}, "retryThrottling": {"maxTokens": 5}},
            r"retryBudget: must be the only retry budget \(drop retryThrottling",
        ),
        (
            {"methodConfig": [{"name": [{}], "retryPolicy": {"maxAttempt": 2}}]},
            r"retryPolicy.maxAttempt: must be one of",
        ),
    ],
)
def test_bad_values_name_the_field_and_the_allowed_range(doc: object, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        build_policy(doc, env={})


def test_a_retry_budget_replaces_a6_throttling() -> None:
    doc = {"retryBudget": {"budgetPercent": 25, "minRetriesPerSecond": 1, "window": "30s"}}
    policy = build_policy(doc, env={})
    assert policy.throttle is None
    assert policy.retry_budget == RatioBudgetOptions(
        budget_percent=25, min_retries_per_second=1, window=30
    )


def test_env_overrides_set_the_retry_budget() -> None:
    env = {"RESILIENCE_RETRY_BUDGET_PERCENT": "10", "RESILIENCE_RETRY_BUDGET_WINDOW": "5s"}
    policy = build_policy({"retryBudget": {}}, env=env)
    assert policy.retry_budget == RatioBudgetOptions(budget_percent=10, window=5)
    with pytest.raises(PolicyError, match=r"\$RESILIENCE_RETRY_BUDGET_PERCENT.*\[0, 100\]"):
        build_policy({"retryBudget": {}}, env={"RESILIENCE_RETRY_BUDGET_PERCENT": "-5"})


def test_the_breakers_open_interval_may_grow() -> None:
    doc = {"circuitBreaker": {"resetTimeout": "0.5s", "maxResetTimeout": "5s"}}
    breaker = build_policy(doc, env={}).breaker
    assert breaker is not None
    assert [breaker.open_interval(n) for n in (1, 2, 5)] == [0.5, 1.0, 5.0]


def test_bad_env_value_names_the_variable() -> None:
    with pytest.raises(PolicyError, match=r"\$RESILIENCE_TIMEOUT.*must be in \[0.001, 86400\]"):
        build_policy({}, env={"RESILIENCE_TIMEOUT": "0s"})


def test_unknown_method_of_a_known_service_is_refused() -> None:
    doc = {
        "methodConfig": [
            {"name": [{"service": "mesh.payment.v1.PaymentService", "method": "Chrage"}]}
        ]
    }
    with pytest.raises(
        PolicyError, match=r"a method of mesh\.payment\.v1\.PaymentService: Charge, GetPayment"
    ):
        build_policy(doc, env={}, descriptors=[PAYMENT])
