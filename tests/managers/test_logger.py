"""The outage filter (pure logic): one warning of a client library per state change of
its dependency, the rest counted and summed up (the real outage is in test_events); and
the writing thread, on a real file."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import logging.handlers
import os
import queue
import re
import stat
import time

import pytest

from managers.logger import BatchWriter, JsonFormatter, LoggerManager, OutageFilter
from tests.helpers import metric, wait_until


def record(name: str, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, "Unable connect to node", None, None)


def test_one_warning_per_state_change_then_counted():
    outages = OutageFilter()
    suppressed = metric("singleton_log_lines_suppressed_total", {"source": "aiokafka"})
    passed = [outages.filter(record("aiokafka.conn")) for _ in range(1000)]
    assert passed.count(True) == 1
    assert metric("singleton_log_lines_suppressed_total", {"source": "aiokafka"}) == suppressed + 999
    # Kafka's state changes (the health monitor says so): the next warning says something new.
    outages.state_changed("kafka")
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
    outages.state_changed("kafka")  # another dependency's change reopens nothing of MongoDB's
    assert outages.filter(record("pymongo.topology")) is False


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


@pytest.mark.gen_test
async def test_the_writer_writes_bursts_in_a_few_writes_in_order_and_rotates_between_them(tmp_path):
    """Written line by line, 500 records were 500 writes to each destination."""
    stream = CountingStream()
    rotating = logging.handlers.RotatingFileHandler(tmp_path / "app.log", maxBytes=15_000, backupCount=10)
    destinations = (logging.StreamHandler(stream), rotating)
    for handler in destinations:
        handler.setFormatter(JsonFormatter())
    records: queue.SimpleQueue = queue.SimpleQueue()
    writer = BatchWriter(records, *destinations)
    writer.start()
    try:
        for burst in range(5):
            for i in range(100):
                records.put(logging.LogRecord("t", logging.INFO, __file__, 1, "line %d", (burst * 100 + i,), None))
            written = (burst + 1) * 100
            await wait_until(lambda n=written: stream.getvalue().count("\n") == n, timeout=5, what=f"{written} lines")
    finally:
        writer.stop()
        rotating.close()
    assert [json.loads(line)["msg"] for line in stream.getvalue().splitlines()] == [f"line {i}" for i in range(500)]
    assert stream.writes <= 25
    files = sorted(tmp_path.glob("app.log*"), key=lambda f: -int(f.suffix[1:]) if f.suffix[1:].isdigit() else 0)
    assert len(files) >= 3, "rotated between bursts"
    assert all(f.stat().st_size <= 15_000 for f in files)
    in_files = [json.loads(line)["msg"] for f in files for line in f.read_text().splitlines()]
    assert in_files == [f"line {i}" for i in range(500)]


@pytest.mark.gen_test
async def test_a_steady_stream_of_lines_is_written_a_few_times_a_second(tmp_path):
    """A line a millisecond, as a busy service logs: about ten writes a second per
    destination, not one per line or per 20 ms (each write takes the GIL from the loop)."""
    stream = CountingStream()
    handler = logging.StreamHandler(stream)
    records: queue.SimpleQueue = queue.SimpleQueue()
    writer = BatchWriter(records, handler)
    writer.start()
    started = time.monotonic()
    try:
        for i in range(1000):
            records.put(f"line {i}")
            await asyncio.sleep(0.001)
        elapsed = time.monotonic() - started
        await wait_until(lambda: stream.getvalue().count("\n") == 1000, timeout=5, what="1000 lines")
    finally:
        writer.stop()
    assert stream.getvalue().splitlines() == [f"line {i}" for i in range(1000)]
    assert stream.writes <= elapsed * 10 + 2, (stream.writes, elapsed)


@pytest.mark.gen_test
async def test_the_log_file_and_its_backups_are_private_whatever_the_umask(tmp_path):
    """logs/app.log and every backup a rotation makes: mode 0600. One left by an older run
    with a wider mode is narrowed at start."""
    path = tmp_path / "logs" / "app.log"
    path.parent.mkdir()
    stale = path.with_name("app.log.2")
    stale.write_text("an older run's backup\n")
    stale.chmod(0o644)
    old_umask = os.umask(0o022)
    try:
        logger = LoggerManager.start({"level": "INFO", "file": str(path), "max_bytes": 2_000, "backups": 3})
    finally:
        os.umask(old_umask)
    try:
        assert stat.S_IMODE(stale.stat().st_mode) == 0o600
        for n in (1, 2, 3):  # a burst past max_bytes rotates once (the writer writes it at once)
            for i in range(30):
                logging.getLogger("singleton.test").info("burst %d, line %d of a log that rotates", n, i)
            backup = path.with_name(f"app.log.{n}")
            await wait_until(backup.exists, timeout=5, what=f"{backup.name} made by a rotation")
    finally:
        await logger.close()
    files = sorted(path.parent.glob("app.log*"))
    assert [f.name for f in files] == ["app.log", "app.log.1", "app.log.2", "app.log.3"]
    assert {f.name: stat.S_IMODE(f.stat().st_mode) for f in files} == {f.name: 0o600 for f in files}


@pytest.mark.gen_test
async def test_a_line_queued_as_text_reads_as_the_same_line_made_from_a_record(tmp_path):
    """The access log's way (``line()``: no LogRecord) and a record's give the same fields,
    with what is None left out; a line below the logger's level is not written."""
    stream = io.StringIO()
    logger = LoggerManager.start({"level": "INFO", "file": "", "max_bytes": 0, "backups": 0}, stream=stream)
    access = logging.getLogger("singleton.test.access")
    fields = {"request_id": "r-1", "status": 404, "duration_ms": 1.25, "key_id": None, "path": "/é/\u2028", "n": 2**70}
    try:
        access.warning("request", extra=fields)
        logger.line(access, logging.WARNING, "request", fields)
        logger.line(access, logging.DEBUG, "request", fields)
    finally:
        await logger.close()
    from_record, from_text = (json.loads(line) for line in stream.getvalue().split("\n")[:-1])
    stamps = from_record.pop("ts"), from_text.pop("ts")
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", ts) for ts in stamps), stamps
    assert from_text == from_record
    assert from_text == {"level": "warning", "logger": "singleton.test.access", "msg": "request"} | {
        k: v for k, v in fields.items() if v is not None
    }
