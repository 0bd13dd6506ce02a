"""The event envelope every Kafka message and WebSocket frame carries."""

from __future__ import annotations

import datetime as dt
import enum
import logging
import uuid
from typing import Any, TypedDict

from domain import codec
from managers import metrics
from managers.kafka_producer import UNAVAILABLE as KAFKA_UNAVAILABLE
from managers.kafka_producer import KafkaProducerManager
from managers.websocket_hub import KEY_REVOKED_EVENT

log = logging.getLogger("singleton.events")

VERSION = 1


class EventType(enum.StrEnum):
    """What the topic carries (and the WebSocket frames that forward it)."""

    USER_CREATED = "user_created"
    USER_UPDATED = "user_updated"
    PAYMENT_CREATED = "payment_created"
    PAYMENT_UPDATED = "payment_updated"
    REFUND_CREATED = "refund_created"
    HEALTH_CHECK = "health_check"
    # Internal: a revoked API key (data {"key_id"}, user_id null), for every instance to
    # close that key's sockets (domain/revocations.py); never forwarded to a socket.
    API_KEY_REVOKED = KEY_REVOKED_EVENT


USER_CREATED, USER_UPDATED = EventType.USER_CREATED, EventType.USER_UPDATED
PAYMENT_CREATED, PAYMENT_UPDATED = EventType.PAYMENT_CREATED, EventType.PAYMENT_UPDATED
REFUND_CREATED = EventType.REFUND_CREATED
HEALTH_CHECK = EventType.HEALTH_CHECK
API_KEY_REVOKED = EventType.API_KEY_REVOKED
DOMAIN_TYPES = (USER_CREATED, USER_UPDATED, PAYMENT_CREATED, PAYMENT_UPDATED, REFUND_CREATED)  # a user's changes
metrics.count_by_name(EventType, metrics.EVENTS_PUBLISHED, metrics.WS_FRAMES_SENT)


class Event(TypedDict):
    """The envelope (openapi.yaml's Event): written to the outbox, published to Kafka, read
    back by the consumers and forwarded to sockets as it is."""

    event_id: str
    type: str  # an EventType's value
    version: int
    occurred_at: str  # RFC 3339, UTC
    user_id: str | None  # None for health_check and api_key_revoked
    # The resource as the API shows it (payment_updated adds previous_status; refund_created:
    # the refund), a user without its email (domain/users.py event_data): events carry no email.
    data: dict[str, Any]


def envelope(
    event_type: str, user_id: str | None, data: dict[str, Any], occurred_at: dt.datetime | None = None
) -> Event:
    return {
        "event_id": str(uuid.uuid4()),
        "type": event_type,
        "version": VERSION,
        "occurred_at": codec.rfc3339(occurred_at or dt.datetime.now(dt.UTC)),
        "user_id": user_id,
        "data": data,
    }


async def publish_health_check(report: dict[str, Any]) -> None:
    """A ``health_check`` event straight to Kafka (not through the outbox: it records
    no change, and a lost one is replaced by the next)."""
    try:
        await KafkaProducerManager.instance().send(codec.dumps(envelope(HEALTH_CHECK, None, report)))
        metrics.HEALTH_EVENTS.labels(metrics.Outcome.SENT).inc()
    except KAFKA_UNAVAILABLE as exc:
        metrics.HEALTH_EVENTS.labels(metrics.Outcome.FAILED).inc()
        log.debug("health_check event not sent", extra={"error": repr(exc)})
