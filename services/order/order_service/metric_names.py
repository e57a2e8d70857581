"""Every metric and label name the order service exports itself, in one place (rules, dashboards,
tests). The RED metrics of its RPCs come from meshkit.server, its outbound calls' from
resilience.metric_names."""

from __future__ import annotations

# Labels: low cardinality only, never an id.
# the order's status when the run ended: CONFIRMED, FAILED or PENDING (SAGA_OUTCOMES);
# what the rate limit did: allowed, limited or redis_unavailable (RATE_LIMIT_DECISIONS)
OUTCOME = "outcome"
REASON = "reason"  # order_service.domain.Reason: none, declined, out_of_stock, ... (fixed set)

#: Saga runs by how they left their order (outcome, reason): every order once when it ends
#: CONFIRMED or FAILED, whichever run ends it, and once more as PENDING when CreateOrder
#: answered before it could end (a step got no answer, or the lease was lost).
SAGA_OUTCOMES = "order_saga_outcomes_total"
#: CreateOrder's handling time; the last call in each bucket whose trace was sampled is
#: its exemplar (``trace_id``). No labels.
CREATE_DURATION = "order_create_duration_seconds"
#: PENDING orders flagged as needing a person: a step has failed ORDER_ATTENTION_RUNS runs in a
#: row (GetOrder's attention_reason says which and why). Counted from the order database after
#: each recovery pass, so every replica sharing it reports the same number. No labels.
NEEDS_ATTENTION = "order_needs_attention"
#: CreateOrders of new request_ids by what the per-customer rate limit did (outcome): allowed,
#: limited (refused with RESOURCE_EXHAUSTED), or redis_unavailable (the admission script got no
#: answer: the order was refused UNAVAILABLE, as no claim could be made either).
#: A retry of an accepted request_id is not looked at, so not counted. Never by customer.
RATE_LIMIT_DECISIONS = "order_rate_limit_decisions_total"
#: Events of finished orders waiting in the outbox to be published to the order events stream
#: (meshkit.order_events), read by the relay after each round. No labels.
OUTBOX_PENDING = "order_outbox_pending"
#: How long the oldest event in the outbox has waited (0 when it is empty). No labels.
OUTBOX_OLDEST_AGE = "order_outbox_oldest_age_seconds"
#: Events the relay published to the stream; a republish after a crash counts again.
EVENTS_PUBLISHED = "order_events_published_total"
#: Relay rounds that could not publish (Redis did not answer); retried with a backoff.
EVENTS_PUBLISH_FAILURES = "order_events_publish_failures_total"
