"""The backing services, listed once.

A new backing service is a ``BackingService`` manager (managers/base.py: its
dependency name, the errors that mean it is unavailable, its client library's
loggers, a ``ping``) added to ``BACKING_SERVICES`` here, and to the roles that use
it in service/lifecycle.py. Everything else follows from this list: the health
monitor pings each started one, the API answers 503 for their ``UNAVAILABLE``
errors, the log filter thins out their libraries' warnings during an outage, and
their metric series exist from the start.
"""

from __future__ import annotations

from managers import metrics
from managers.base import BackingService
from managers.kafka_producer import KafkaProducerManager
from managers.mongodb import MongoManager
from managers.mysql import MySQLManager
from managers.redis import RedisManager

BACKING_SERVICES: tuple[type[BackingService], ...] = (MySQLManager, MongoManager, RedisManager, KafkaProducerManager)

# What a request answers with 503 dependency_unavailable: a backing service failing mid-request.
UNAVAILABLE: tuple[type[BaseException], ...] = tuple({e: None for cls in BACKING_SERVICES for e in cls.unavailable})

# The client libraries' loggers, by the dependency they talk to (managers/logger.py's OutageFilter).
LOG_SOURCES: dict[str, str] = {source: cls.dependency for cls in BACKING_SERVICES for source in cls.log_sources}

for _cls in BACKING_SERVICES:
    metrics.DEPENDENCY_UP.labels(_cls.dependency)
    metrics.DEPENDENCY_CHECK_DURATION.labels(_cls.dependency)
for _source in LOG_SOURCES:
    metrics.LOG_LINES_SUPPRESSED.labels(_source)
