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
    """The pipeline failed a call without (re)sending it: breaker open, bulkhead full, no time."""

    def __init__(self, code: str, details: str) -> None:
        self.code = code
        self.details = details
        super().__init__(f"{code}: {details}")
