"""What an event makes stale in this instance's near cache (managers/redis.py).

Every instance reads every event (the broadcast consumer). A user's or payment's
event names its new version, and any older copy this instance holds is dropped at
once: a change made on another instance is seen here within the event's delay
(milliseconds), or, while Kafka is down, when the copy expires
(``redis.local_cache_ttl_s``): that is the staleness bound of a read.
"""

from __future__ import annotations

from domain import events, payments, users
from managers.redis import RedisManager

_KEYS = {
    events.USER_CREATED: users.cache_key,
    events.USER_UPDATED: users.cache_key,
    events.PAYMENT_CREATED: payments.cache_key,
    events.PAYMENT_UPDATED: payments.cache_key,
}


def forget_older_copies(event: dict) -> None:
    """The broadcast consumer's listener: drop what ``event`` made stale here."""
    key_of = _KEYS.get(event.get("type"))
    data = event.get("data")
    if key_of is None or not isinstance(data, dict):
        return
    resource_id, version = data.get("id"), data.get("version")
    if isinstance(resource_id, str) and isinstance(version, int):
        RedisManager.instance().forget_older(key_of(resource_id), version)
