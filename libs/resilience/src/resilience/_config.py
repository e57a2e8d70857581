"""Policy files: the gRPC service-config vocabulary plus a few extensions, and env overrides.

    {
      "methodConfig": [
        {"name": [{}], "timeout": "2s",
         "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.05s", "maxBackoff": "1s",
                         "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"],
                         "perAttemptRecvTimeout": "0.5s"}},
        {"name": [{"service": "mesh.payment.v1.PaymentService", "method": "Charge"}],
         "timeout": "3s"}
      ],
      "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
      // or, instead of retryThrottling (see resilience._budget for when to pick which):
      "retryBudget": {"budgetPercent": 20, "minRetriesPerSecond": 3, "window": "10s"},
      "circuitBreaker": {"consecutiveFailures": 5,
                         "failureRate": {"threshold": 0.5, "window": "10s", "minimumCalls": 20},
                         "resetTimeout": "0.5s", "maxResetTimeout": "5s",
                         "halfOpenMaxCalls": 1, "successThreshold": 1,
                         "perMethod": false},
      "bulkhead": {"maxConcurrentCalls": 100},
      "deadlineMargin": "0.02s"
    }

An entry for a method overrides, key by key, its service's entry, which overrides the default
entry (`"name": [{}]`). A missing section takes its defaults; `null` turns that policy off.
`retryBudget` is off unless present, and then replaces `retryThrottling`'s default.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from google.protobuf.descriptor import ServiceDescriptor

from ._breaker import BreakerOptions, ConsecutiveFailures, FailureRate, TripCondition
from ._budget import RatioBudgetOptions, ThrottleOptions
from ._bulkhead import BulkheadOptions
from ._codes import ALL_CODES
from ._errors import PolicyError
from ._policy import (
    DEFAULT_DEADLINE_MARGIN,
    NO_RETRY,
    ClientPolicy,
    Idempotency,
    MethodPolicy,
    RetryOptions,
)

T = TypeVar("T")

ENV_POLICY_FILE = "RESILIENCE_POLICY_FILE"

# Env var -> where it lands in the config document ("default" is the `"name": [{}]` entry).
ENV_OVERRIDES: Mapping[str, tuple[str, ...]] = {
    "RESILIENCE_TIMEOUT": ("default", "timeout"),
    "RESILIENCE_MAX_ATTEMPTS": ("default", "retryPolicy", "maxAttempts"),
    "RESILIENCE_PER_ATTEMPT_TIMEOUT": ("default", "retryPolicy", "perAttemptRecvTimeout"),
    "RESILIENCE_RETRY_MAX_TOKENS": ("retryThrottling", "maxTokens"),
    "RESILIENCE_RETRY_TOKEN_RATIO": ("retryThrottling", "tokenRatio"),
    "RESILIENCE_RETRY_BUDGET_PERCENT": ("retryBudget", "budgetPercent"),
    "RESILIENCE_RETRY_BUDGET_MIN_PER_SECOND": ("retryBudget", "minRetriesPerSecond"),
    "RESILIENCE_RETRY_BUDGET_WINDOW": ("retryBudget", "window"),
    "RESILIENCE_BREAKER_CONSECUTIVE_FAILURES": ("circuitBreaker", "consecutiveFailures"),
    "RESILIENCE_BREAKER_RESET_TIMEOUT": ("circuitBreaker", "resetTimeout"),
    "RESILIENCE_BULKHEAD_MAX_CONCURRENT_CALLS": ("bulkhead", "maxConcurrentCalls"),
    "RESILIENCE_DEADLINE_MARGIN": ("deadlineMargin",),
}

_TOP_KEYS = frozenset(
    {
        "methodConfig",
        "retryThrottling",
        "retryBudget",
        "circuitBreaker",
        "bulkhead",
        "deadlineMargin",
    }
)
_ENTRY_KEYS = frozenset({"name", "timeout", "retryPolicy", "waitForReady"})
_RETRY_KEYS = frozenset(
    {
        "maxAttempts",
        "initialBackoff",
        "maxBackoff",
        "backoffMultiplier",
        "retryableStatusCodes",
        "perAttemptRecvTimeout",
    }
)
_BREAKER_KEYS = frozenset(
    {
        "consecutiveFailures",
        "failureRate",
        "resetTimeout",
        "maxResetTimeout",
        "halfOpenMaxCalls",
        "successThreshold",
        "perMethod",
    }
)


def load_policy(
    path: str | None,
    *,
    env: Mapping[str, str] = os.environ,
    descriptors: Sequence[ServiceDescriptor] = (),
) -> ClientPolicy:
    """Read a JSON or YAML policy file (or `$RESILIENCE_POLICY_FILE`, or none), apply env
    overrides and validate; a bad value raises PolicyError naming the field and its range."""
    source = path or env.get(ENV_POLICY_FILE)
    document: object = {}
    if source:
        text = Path(source).read_text(encoding="utf-8")
        if source.endswith(".json"):
            document = json.loads(text)
        else:
            # Imported here: PyYAML is ~0.9 MiB of RSS in every process that imports this
            # library, and only a process given a YAML policy file needs it.
            import yaml

            document = yaml.safe_load(text)
        if document is None:
            document = {}
    return build_policy(document, env=env, descriptors=descriptors)


def build_policy(
    document: object,
    *,
    env: Mapping[str, str] = os.environ,
    descriptors: Sequence[ServiceDescriptor] = (),
) -> ClientPolicy:
    """Validate an already parsed policy document (see the module docstring)."""
    doc = _mapping(document, "")
    _known_keys(doc, _TOP_KEYS, "")
    entries = [
        _mapping(e, f"methodConfig[{i}]")
        for i, e in enumerate(_list(doc.get("methodConfig", []), "methodConfig"))
    ]
    default_entry: dict[str, Any] = {}
    service_entries: dict[str, tuple[str, dict[str, Any]]] = {}
    method_entries: dict[str, tuple[str, dict[str, Any]]] = {}
    for i, entry in enumerate(entries):
        where = f"methodConfig[{i}]"
        _known_keys(entry, _ENTRY_KEYS, where)
        for j, name in enumerate(_list(entry.get("name", [{}]), f"{where}.name")):
            name = _mapping(name, f"{where}.name[{j}]")
            _known_keys(name, frozenset({"service", "method"}), f"{where}.name[{j}]")
            service, method = name.get("service", ""), name.get("method", "")
            if method and not service:
                raise PolicyError(f"{where}.name[{j}].service", "set when method is set", service)
            if method:
                method_entries[f"/{service}/{method}"] = (where, entry)
            elif service:
                service_entries[service] = (where, entry)
            else:
                default_entry = dict(entry)

    # Env overrides, remembered so an error can name the variable.
    from_env: dict[str, str] = {}
    top = dict(doc)
    for var, route in ENV_OVERRIDES.items():
        if var not in env:
            continue
        holder: dict[str, Any] = default_entry if route[0] == "default" else top
        keys = route[1:] if route[0] == "default" else route
        for key in keys[:-1]:
            inner = holder.get(key)
            holder[key] = inner = dict(inner) if isinstance(inner, Mapping) else {}
            holder = inner
        holder[keys[-1]] = env[var]
        section = "methodConfig[default]" if route[0] == "default" else ""
        from_env[".".join(filter(None, (section, *keys)))] = var

    try:
        return _assemble(top, default_entry, service_entries, method_entries, descriptors)
    except PolicyError as err:
        source = from_env.get(err.field)
        if source is None:
            raise
        raise PolicyError(f"{err.field} (from ${source})", err.allowed, err.got) from None


def _assemble(
    top: Mapping[str, Any],
    default_entry: Mapping[str, Any],
    service_entries: Mapping[str, tuple[str, Mapping[str, Any]]],
    method_entries: Mapping[str, tuple[str, Mapping[str, Any]]],
    descriptors: Sequence[ServiceDescriptor],
) -> ClientPolicy:
    idempotency: dict[str, Idempotency] = {}
    known_services: dict[str, set[str]] = {}
    for service in descriptors:
        known_services[service.full_name] = {m.name for m in service.methods}
        for m in service.methods:
            level = m.GetOptions().idempotency_level
            idempotency[f"/{service.full_name}/{m.name}"] = Idempotency(level)
    for key, (where, _) in method_entries.items():
        service_name, method = key[1:].split("/")
        if service_name in known_services and method not in known_services[service_name]:
            allowed = (
                f"a method of {service_name}: {', '.join(sorted(known_services[service_name]))}"
            )
            raise PolicyError(f"{where}.name.method", allowed, method)

    default = _method_policy([default_entry], "methodConfig[default]")
    services = {
        s: _method_policy([default_entry, e], where) for s, (where, e) in service_entries.items()
    }
    methods = {}
    for key, (where, entry) in method_entries.items():
        service_entry = service_entries.get(key[1:].split("/")[0], ("", {}))[1]
        methods[key] = _method_policy([default_entry, service_entry, entry], where)

    margin = top.get("deadlineMargin")
    retry_budget = None
    if top.get("retryBudget") not in (None, False):
        retry_budget = _ratio_budget(_mapping(top["retryBudget"], "retryBudget"), "retryBudget")
    throttle = (
        None
        if retry_budget is not None and "retryThrottling" not in top
        else _section(top, "retryThrottling", _throttle)
    )
    return _checked(
        "",
        lambda: ClientPolicy(
            default=default,
            services=services,
            methods=methods,
            idempotency=idempotency,
            throttle=throttle,
            retry_budget=retry_budget,
            breaker=_section(top, "circuitBreaker", _breaker),
            bulkhead=_section(top, "bulkhead", _bulkhead),
            deadline_margin=DEFAULT_DEADLINE_MARGIN
            if margin is None
            else _seconds(margin, "deadlineMargin"),
        ),
    )


def _method_policy(layers: Sequence[Mapping[str, Any]], where: str) -> MethodPolicy:
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(layer)
    kwargs: dict[str, Any] = {}
    if "timeout" in merged:
        kwargs["timeout"] = _seconds(merged["timeout"], f"{where}.timeout")
    retry = merged.get("retryPolicy")
    kwargs["retry"] = NO_RETRY if retry is None else _retry(retry, f"{where}.retryPolicy")
    return _checked(where, lambda: MethodPolicy(**kwargs))


def _retry(raw: object, where: str) -> RetryOptions:
    doc = _mapping(raw, where)
    _known_keys(doc, _RETRY_KEYS, where)
    kwargs: dict[str, Any] = {}
    if "maxAttempts" in doc:
        kwargs["max_attempts"] = _int(doc["maxAttempts"], f"{where}.maxAttempts")
    for key, name in (("initialBackoff", "initial_backoff"), ("maxBackoff", "max_backoff")):
        if key in doc:
            kwargs[name] = _seconds(doc[key], f"{where}.{key}")
    if "perAttemptRecvTimeout" in doc:
        kwargs["per_attempt_timeout"] = _seconds(
            doc["perAttemptRecvTimeout"], f"{where}.perAttemptRecvTimeout"
        )
    if "backoffMultiplier" in doc:
        kwargs["backoff_multiplier"] = _number(
            doc["backoffMultiplier"], f"{where}.backoffMultiplier"
        )
    if "retryableStatusCodes" in doc:
        codes = _list(doc["retryableStatusCodes"], f"{where}.retryableStatusCodes")
        names = []
        for code in codes:
            if not isinstance(code, str) or code.upper() not in ALL_CODES:
                raise PolicyError(f"{where}.retryableStatusCodes", "gRPC status code names", code)
            names.append(code.upper())
        kwargs["retryable_codes"] = frozenset(names)
    return _checked(where, lambda: RetryOptions(**kwargs))


def _throttle(doc: Mapping[str, Any], where: str) -> ThrottleOptions:
    _known_keys(doc, frozenset({"maxTokens", "tokenRatio"}), where)
    kwargs: dict[str, Any] = {}
    if "maxTokens" in doc:
        kwargs["max_tokens"] = _number(doc["maxTokens"], f"{where}.maxTokens")
    if "tokenRatio" in doc:
        kwargs["token_ratio"] = _number(doc["tokenRatio"], f"{where}.tokenRatio")
    return _checked(where, lambda: ThrottleOptions(**kwargs))


def _ratio_budget(doc: Mapping[str, Any], where: str) -> RatioBudgetOptions:
    _known_keys(doc, frozenset({"budgetPercent", "minRetriesPerSecond", "window"}), where)
    kwargs: dict[str, Any] = {}
    if "budgetPercent" in doc:
        kwargs["budget_percent"] = _number(doc["budgetPercent"], f"{where}.budgetPercent")
    if "minRetriesPerSecond" in doc:
        kwargs["min_retries_per_second"] = _number(
            doc["minRetriesPerSecond"], f"{where}.minRetriesPerSecond"
        )
    if "window" in doc:
        kwargs["window"] = _seconds(doc["window"], f"{where}.window")
    return _checked(where, lambda: RatioBudgetOptions(**kwargs))


def _breaker(doc: Mapping[str, Any], where: str) -> BreakerOptions:
    _known_keys(doc, _BREAKER_KEYS, where)
    kwargs: dict[str, Any] = {}
    trips: list[TripCondition] = []
    if "consecutiveFailures" in doc:
        n = _int(doc["consecutiveFailures"], f"{where}.consecutiveFailures")
        trips.append(_checked(where, lambda: ConsecutiveFailures(threshold=n)))
    if doc.get("failureRate") is not None:
        rate_where = f"{where}.failureRate"
        rate = _mapping(doc["failureRate"], rate_where)
        _known_keys(rate, frozenset({"threshold", "window", "minimumCalls"}), rate_where)
        for key in ("threshold", "window", "minimumCalls"):
            if key not in rate:
                raise PolicyError(f"{rate_where}.{key}", "set", None)
        threshold = _number(rate["threshold"], f"{rate_where}.threshold")
        window = _seconds(rate["window"], f"{rate_where}.window")
        minimum = _int(rate["minimumCalls"], f"{rate_where}.minimumCalls")
        trips.append(
            _checked(
                where,
                lambda: FailureRate(threshold=threshold, window=window, minimum_calls=minimum),
            )
        )
    if trips:
        trip = trips[0]
        for more in trips[1:]:
            trip = trip | more
        kwargs["trip"] = trip
    if "resetTimeout" in doc:
        kwargs["reset_timeout"] = _seconds(doc["resetTimeout"], f"{where}.resetTimeout")
    if "maxResetTimeout" in doc:
        kwargs["max_reset_timeout"] = _seconds(doc["maxResetTimeout"], f"{where}.maxResetTimeout")
    for key, name in (
        ("halfOpenMaxCalls", "half_open_max_calls"),
        ("successThreshold", "success_threshold"),
    ):
        if key in doc:
            kwargs[name] = _int(doc[key], f"{where}.{key}")
    if "perMethod" in doc:
        if not isinstance(doc["perMethod"], bool):
            raise PolicyError(f"{where}.perMethod", "true or false", doc["perMethod"])
        kwargs["per_method"] = doc["perMethod"]
    return _checked(where, lambda: BreakerOptions(**kwargs))


def _bulkhead(doc: Mapping[str, Any], where: str) -> BulkheadOptions:
    _known_keys(doc, frozenset({"maxConcurrentCalls"}), where)
    kwargs: dict[str, Any] = {}
    if "maxConcurrentCalls" in doc:
        kwargs["max_concurrent_calls"] = _int(
            doc["maxConcurrentCalls"], f"{where}.maxConcurrentCalls"
        )
    return _checked(where, lambda: BulkheadOptions(**kwargs))


def _section(top: Mapping[str, Any], key: str, parse: Any) -> Any:
    if key not in top:
        return parse({}, key)
    if top[key] is None or top[key] is False:
        return None
    return parse(_mapping(top[key], key), key)


def _checked(where: str, build: Callable[[], T]) -> T:
    try:
        return build()
    except PolicyError as err:
        if err.field.startswith(where):
            raise
        raise err.under(where) from None


def _mapping(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise PolicyError(where or "policy", "an object", value)
    return dict(value)


def _list(value: object, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise PolicyError(where, "a list", value)
    return value


def _known_keys(doc: Mapping[str, Any], known: frozenset[str], where: str) -> None:
    for key in doc:
        if key not in known:
            raise PolicyError(
                f"{where}.{key}" if where else key, f"one of {', '.join(sorted(known))}", key
            )


def _number(value: object, where: str) -> float:
    if isinstance(value, bool):
        raise PolicyError(where, "a number", value)
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise PolicyError(where, "a number", value)


def _int(value: object, where: str) -> int:
    if isinstance(value, bool):
        raise PolicyError(where, "an integer", value)
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise PolicyError(where, "an integer", value)


def _seconds(value: object, where: str) -> float:
    """A duration: a number of seconds, "1.5s" (protobuf JSON) or "150ms"."""
    if isinstance(value, str):
        text = value.strip()
        scale = 1.0
        if text.endswith("ms"):
            text, scale = text[:-2], 0.001
        elif text.endswith("s"):
            text = text[:-1]
        try:
            return float(text) * scale
        except ValueError:
            raise PolicyError(where, 'a duration such as "1.5s", "150ms" or 1.5', value) from None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise PolicyError(where, 'a duration such as "1.5s", "150ms" or 1.5', value)
