"""Every metric and label name the notification service exports itself, in one place (rules,
dashboards, tests). The RED metrics of its RPC come from meshkit.server."""

from __future__ import annotations

# Labels: low cardinality only, never an order, event or consumer name.
TYPE = "type"  # the event's type: order.confirmed or order.failed
CAUSE = "cause"  # why an entry was dead-lettered: one of the CAUSE_* values

CAUSE_FAILED = "failed"  # its processing failed on its last allowed delivery
CAUSE_OVERDELIVERED = "overdelivered"  # delivered too often without an acknowledgement

#: Notifications stored (an event seen for the first time), by event type.
STORED = "notification_stored_total"
#: Events delivered again after their notification was stored, and acknowledged as they were.
DUPLICATES = "notification_duplicates_total"
#: Deliveries whose processing failed (the event stays pending and is retried after a claim).
FAILURES = "notification_processing_failures_total"
#: Entries moved to the dead-letter stream, by cause.
DEAD_LETTERED = "notification_dead_lettered_total"
#: Entries taken over from a consumer that held them past the claim idle time.
CLAIMED = "notification_claimed_total"
#: Entries of the stream not yet delivered to the group (XINFO GROUPS lag), as last read.
LAG = "notification_consumer_lag"
#: Entries delivered to the group and not yet acknowledged, as last read.
PENDING = "notification_pending"
#: Failed Redis calls of the consumers (each is followed by a backoff).
REDIS_ERRORS = "notification_redis_errors_total"
