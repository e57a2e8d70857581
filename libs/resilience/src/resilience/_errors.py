"""Errors raised by the policy core; interceptors turn `LocalFailure` into a gRPC status."""

from __future__ import annotations


class PolicyError(ValueError):
    """A policy value is out of range; the message names the field and the allowed range."""

    def __init__(self, field: str, allowed: str, got: object) -> None:
        self.field = field
        self.allowed = allowed
        self.got = got
        super().__init__(f"{field}: must be {allowed}, got {got!r}")

    def under(self, prefix: str) -> PolicyError:
        """The same error with the field path prefixed, e.g. `methodConfig[1].timeout`."""
        return PolicyError(
            f"{prefix}.{self.field}" if prefix else self.field, self.allowed, self.got
        )


class LocalFailure(Exception):
    """The pipeline failed a call without (re)sending it: breaker open, bulkhead full, no time.

    ``attempts_sent`` is how many attempts had gone before the refusal: 0 means the call never
    left this process, so the callee certainly did nothing (a saga may count it as not done).
    """

    def __init__(self, code: str, details: str) -> None:
        self.code = code
        self.details = details
        self.attempts_sent = 0
        super().__init__(f"{code}: {details}")


def never_sent(error: BaseException) -> bool:
    """True when ``error`` is the pipeline's refusal of a call no attempt of which was sent
    (breaker open, bulkhead full, deadline spent before the first attempt), from either the
    sync or the asyncio client; False for any error that came back from the network."""
    return getattr(error, "resilience_attempts_sent", None) == 0
