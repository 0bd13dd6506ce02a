"""AnalyticsConsumer: the topic, read in the analytics consumer group shared by every
instance (managers/kafka_consumer.py's GroupConsumer: at least once, a batch read
again after any failure), folded into the analytics store (domain/analytics.py),
which counts each event once whatever it sees again."""

from __future__ import annotations

from domain import codec
from domain.analytics import NAME, AnalyticsStore, Delivery
from managers import metrics
from managers.config import Config
from managers.kafka_consumer import GroupConsumer, Record
from managers.mongodb import MongoManager


class AnalyticsConsumer(GroupConsumer):
    name = NAME
    stores = (MongoManager,)  # MongoDB out of reach is an outage; a write it refuses, a bug (both retried)

    def __init__(self, config: Config):
        super().__init__(config, group=config["kafka"]["analytics_group"])
        self.store = AnalyticsStore(MongoManager.instance().db)

    async def handle(self, records: list[Record], redelivered: bool) -> None:
        deliveries = []
        for record in records:
            try:
                deliveries.append(Delivery(record.partition, record.offset, codec.loads(record.value or b"")))
            except codec.InvalidJSON:
                metrics.CONSUMER_ERRORS.labels(NAME).inc()
        await self.store.apply(deliveries, read=redelivered)
        for d in deliveries:
            event_type = d.event.get("type") if isinstance(d.event, dict) else None
            metrics.EVENTS_CONSUMED.labels(NAME, metrics.event_label(event_type)).inc()
