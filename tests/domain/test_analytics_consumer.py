"""What the analytics consumer makes of Kafka records before the store sees them (no servers)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from domain.analytics import Delivery
from domain.analytics_consumer import AnalyticsConsumer
from managers.kafka_consumer import Record


class Store:
    """Stands in for AnalyticsStore: keeps what it was handed."""

    def __init__(self) -> None:
        self.applied: list[Delivery] = []

    async def apply(self, batch: list[Delivery], read: bool = False) -> int:
        self.applied.extend(batch)
        return len(batch)


def test_a_record_with_a_null_value_is_skipped_not_fatal() -> None:
    # A null value (a tombstone) used to raise TypeError out of handle(), which the
    # consumer's loop does not retry: the loop ended, and analytics stopped for good.
    consumer = AnalyticsConsumer.__new__(AnalyticsConsumer)  # no MongoDB needed
    store = Store()
    consumer.store = store  # type: ignore[assignment]  # a stand-in with the one method handle() calls
    event: dict[str, Any] = {"type": "user_created", "event_id": "e1"}
    records = [Record(0, 1, None), Record(0, 2, b"not json"), Record(0, 3, json.dumps(event).encode())]
    loop = asyncio.new_event_loop()  # not asyncio.run(): it would unset the session's current loop
    try:
        loop.run_until_complete(consumer.handle(records, redelivered=False))
    finally:
        loop.close()
    assert store.applied == [Delivery(0, 3, event)]
