"""managers/background.py on its own: an outage is a few warnings, a bug an ERROR with its
traceback and a count, and either is retried; and which errors each backing service calls
an outage. Pure logic: the errors are made up here; every loop that uses it has a test
against the real servers (tests/*/test_background_failures.py)."""

from __future__ import annotations

import logging

import pymysql
import pytest
from aiokafka import errors as kafka_errors
from aiokafka.errors import KafkaError
from pymongo.errors import AutoReconnect, OperationFailure
from redis import exceptions as redis_errors

from managers.background import Backoff, Failures, reconnect
from managers.kafka_producer import KafkaProducerManager
from managers.mongodb import MongoManager
from managers.mysql import MySQLManager
from managers.redis import RedisManager
from tests.helpers import bugs


class Unreachable(ConnectionError):
    pass


def is_outage(exc: BaseException) -> bool:
    return isinstance(exc, Unreachable)


def test_an_outage_is_one_warning_and_no_bug_count(caplog):
    caplog.set_level(logging.INFO, logger="singleton.background")
    failures = Failures("test_outage", is_outage, outage="store out of reach")
    for _ in range(50):
        failures.failed(Unreachable("no route"))
    failures.succeeded()
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert lines == [("WARNING", "store out of reach"), ("INFO", "dependency reachable again")]
    assert bugs("test_outage") == 0


def test_a_bug_is_one_error_with_its_traceback_and_every_failure_is_counted(caplog):
    caplog.set_level(logging.INFO, logger="singleton.background")
    failures = Failures("test_bug", is_outage, outage="store out of reach")
    for _ in range(3):
        failures.failed(KeyError("amount"))
    [line] = caplog.records
    assert line.levelname == "ERROR"
    assert line.getMessage() == "background task failed: a bug, not an outage; retrying with backoff"
    assert line.exc_info is not None and line.exc_info[0] is KeyError
    assert line.task == "test_bug"
    assert "out of reach" not in caplog.text
    assert bugs("test_bug") == 3
    assert failures.kind == "bug"


def test_a_bug_during_an_outage_is_still_reported_as_a_bug(caplog):
    caplog.set_level(logging.INFO, logger="singleton.background")
    failures = Failures("test_mixed", is_outage)
    failures.failed(Unreachable())
    failures.failed(ValueError("bad row"))
    assert [r.levelname for r in caplog.records] == ["WARNING", "ERROR"]
    assert bugs("test_mixed") == 1


def test_backoff_doubles_to_its_ceiling_and_resets():
    backoff = Backoff(0.5, 3.0)
    assert [backoff.next() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.reset()
    assert backoff.next() == 0.5


@pytest.mark.gen_test
async def test_reconnect_retries_a_bug_too_and_says_which_it_was(caplog):
    caplog.set_level(logging.INFO, logger="singleton.background")
    outcomes = [Unreachable("down"), RuntimeError("broken migration"), "connected"]

    async def attempt() -> str:
        outcome = outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    result = await reconnect("test_reconnect", attempt, is_outage, initial_delay_s=0.001, max_delay_s=0.001)
    assert result == "connected"
    assert [r.levelname for r in caplog.records] == ["WARNING", "ERROR", "INFO"]
    assert bugs("test_reconnect") == 1


@pytest.mark.parametrize(
    ("manager", "exc", "outage"),
    [
        (MySQLManager, pymysql.err.OperationalError(2013, "Lost connection to server during query"), True),
        (MySQLManager, pymysql.err.OperationalError(1205, "Lock wait timeout exceeded"), True),
        (MySQLManager, pymysql.err.OperationalError(1054, "Unknown column 'oops' in 'field list'"), False),
        (MySQLManager, pymysql.err.ProgrammingError(1064, "You have an error in your SQL syntax"), False),
        (MySQLManager, TimeoutError(), True),
        (KafkaProducerManager, KafkaError("Unable to get cluster metadata over all known brokers"), True),
        (KafkaProducerManager, kafka_errors.NotLeaderForPartitionError(), True),
        (KafkaProducerManager, kafka_errors.RecordTooLargeError(), False),
        (KafkaProducerManager, KeyError("topic"), False),
        (MongoManager, AutoReconnect("connection closed"), True),
        (MongoManager, OperationFailure("failed to connect to `user=ferretdb`: dial error", code=1), True),
        (MongoManager, OperationFailure("interrupted at shutdown", code=11600), True),
        (MongoManager, OperationFailure("unknown operator: $incc", code=2), False),
        (RedisManager, redis_errors.ConnectionError("Connection refused"), True),
    ],
)
def test_each_backing_service_says_which_of_its_errors_are_an_outage(manager, exc, outage):
    """What background loops count as an outage; anything else they report as a bug."""
    assert manager.is_unavailable(exc) is outage
