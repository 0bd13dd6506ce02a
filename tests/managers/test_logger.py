"""The outage filter (pure logic): one warning of a client library per state change of
its dependency, the rest counted and summed up. The real outage is in test_events."""

from __future__ import annotations

import logging

from managers.logger import OutageFilter
from managers.metrics import Dependency
from tests.helpers import metric


def record(name: str, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, "Unable connect to node", None, None)


def test_one_warning_per_state_change_then_counted():
    outages = OutageFilter()
    suppressed = metric("singleton_log_lines_suppressed_total", {"source": "aiokafka"})
    passed = [outages.filter(record("aiokafka.conn")) for _ in range(1000)]
    assert passed.count(True) == 1
    assert metric("singleton_log_lines_suppressed_total", {"source": "aiokafka"}) == suppressed + 999
    # Kafka's state changes (the health monitor says so): the next warning says something new.
    outages.state_changed(Dependency.KAFKA)
    assert outages.filter(record("aiokafka.consumer")) is True
    assert outages.filter(record("kafka.conn")) is True  # another library of the same broker, first time
    assert outages.filter(record("kafka.conn")) is False
    assert outages.take_summary() == {"aiokafka": 999, "kafka": 1}
    assert outages.take_summary() == {}


def test_other_loggers_and_quieter_levels_are_untouched():
    outages = OutageFilter()
    assert all(outages.filter(record("singleton.outbox")) for _ in range(10))
    assert all(outages.filter(record("aiokafka.conn", logging.INFO)) for _ in range(10))
    assert outages.filter(record("pymongo.topology")) is True
    outages.state_changed(Dependency.KAFKA)  # another dependency's change reopens nothing of MongoDB's
    assert outages.filter(record("pymongo.topology")) is False
