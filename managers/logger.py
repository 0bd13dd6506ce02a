"""LoggerManager: structured JSON lines to stdout and a rotating file.

Every line inside a request carries that request's id, taken from a context
variable that ``handlers.base.BaseHandler.set_default_headers`` sets.

The event loop only hands each record to a queue (``DeferredHandler``): a
thread of its own (``BatchWriter``) formats the JSON and writes it in batches, so
a line costs the loop a few microseconds, not a write to two files. The access
line, one per request, skips even the ``LogRecord``: ``line()`` formats it on
the loop (orjson, a few microseconds) and queues its UTF-8 (docs/BENCHMARKS.md,
history), in the same shape a record gets.

During an outage the client libraries (aiokafka, PyMongo, redis-py, aiomysql)
can log a warning per retry, thousands a minute. ``OutageFilter`` lets through
one of a library's warnings per change of its dependency's state (the
HealthMonitor reports the changes), counts the rest in
``singleton_log_lines_suppressed_total`` and says how many once a minute.
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import json
import logging
import logging.handlers
import os
import queue
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import orjson

from managers import metrics
from managers.base import Manager
from managers.config import LoggingConfig
from managers.dependencies import LOG_SOURCES

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

# Attributes every LogRecord has; anything else passed in ``extra=`` is emitted as a field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line. A record is formatted once, however many handlers write it."""

    def format(self, record: logging.LogRecord) -> str:
        formatted = record.__dict__.get("_json")
        if formatted is None:
            formatted = record._json = self._format(record)
        return formatted

    def _format(self, record: logging.LogRecord) -> str:
        line = head(record.created, record.levelname, record.name, record.getMessage())
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_") and value is not None:
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return to_json(line)


_second: tuple[int, str] = (-1, "")  # the last second a line was stamped with, formatted


def head(created: float, level: str, logger: str, msg: str) -> dict[str, Any]:
    """The fields every line starts with; the time in UTC, to the millisecond (the second's
    text made once a second)."""
    global _second
    whole = int(created)
    if _second[0] != whole:
        _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    ts = f"{_second[1]}.{int((created - whole) * 1000):03d}Z"
    return {"ts": ts, "level": level.lower(), "logger": logger, "msg": msg}


def to_json(line: dict[str, Any]) -> str:
    """One line's JSON: orjson's, or json's for what orjson refuses (an integer past 64 bits,
    a lone surrogate); anything neither knows is written as its ``str()``."""
    try:
        return orjson.dumps(line, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        return json.dumps(line, default=str, ensure_ascii=False)


class DeferredHandler(logging.handlers.QueueHandler):
    """The loop's side of the log: note the request id, queue the record. Formatting
    and writing happen in the QueueListener's thread."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        if "request_id" not in record.__dict__:
            record.request_id = request_id_var.get()
        return record


class BatchWriter(logging.handlers.QueueListener):
    """The writing thread. It takes what the loop queued in batches (gathering for
    ``GATHER_S``), formats each record once, and writes a batch with one write and one
    flush per destination.

    Written line by line, each line's system calls hand the GIL back and forth, and the
    event loop waits for it every time: at INFO, one access line per request cost GET user
    24% of its throughput; in batches, about 10% (docs/PROFILING.md). Gathering for 0.1 s
    rather than 0.02, without waking on the first line while busy, took the thread's
    switches from 1,200 to 270 a second and 5-10 µs off each GET. A line reaches its file
    at most ``GATHER_S`` later; ``stop()`` writes everything queued before it."""

    GATHER_S = 0.1
    BATCH_MAX = 5000
    # What LoggerManager.start hands it: records, and lines already formatted (``line()``).
    queue: queue.SimpleQueue[logging.LogRecord | str | bytes | None]
    _sentinel: None  # QueueListener's end-of-queue marker (private, so typeshed omits it)

    def _monitor(self) -> None:
        stopping = busy = False
        while not stopping:
            # Idle, it sleeps until a record comes. Busy (the last batch had records), it only
            # sleeps between batches: a put() then wakes nobody, one GIL handoff fewer a batch.
            batch = [] if busy else [self.queue.get()]
            time.sleep(self.GATHER_S)
            while len(batch) < self.BATCH_MAX:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            # line()'s lines come as UTF-8: decoded here, once for every destination.
            records = [r.decode() if isinstance(r, bytes) else r for r in batch if r is not self._sentinel]
            stopping, busy = len(records) < len(batch), bool(records)
            if records:
                for handler in self.handlers:
                    self._write(handler, records)

    @staticmethod
    def _write(handler: logging.Handler, records: list[logging.LogRecord | str]) -> None:
        assert isinstance(handler, logging.StreamHandler)
        try:
            text = "".join((r if isinstance(r, str) else handler.format(r)) + handler.terminator for r in records)
            with handler.lock or contextlib.nullcontext():
                if isinstance(handler, logging.handlers.RotatingFileHandler) and handler.maxBytes > 0:
                    if handler.stream is None:
                        handler.stream = handler._open()
                    if handler.stream.tell() + len(text) >= handler.maxBytes:
                        handler.doRollover()
                assert handler.stream is not None  # doRollover reopens it: our handlers do not delay
                handler.stream.write(text)
                handler.flush()
        except Exception:  # logging's own report to stderr, as for a line
            first = records[0]
            handler.handleError(
                first if isinstance(first, logging.LogRecord) else logging.makeLogRecord({"msg": first})
            )


class PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """The log file, readable and writable by the service's OS user only (mode 0600), and so
    each backup a rotation makes (a rename keeps the mode). Logs name keys by id, addresses
    and request paths: not for every local account. A file or backup left by an older run
    with a wider mode is narrowed when the handler opens."""

    def __init__(self, filename: Path, max_bytes: int, backups: int):
        for existing in [filename, *(Path(f"{filename}.{n}") for n in range(1, backups + 1))]:
            if existing.exists():
                os.chmod(existing, 0o600)
        super().__init__(filename, maxBytes=max_bytes, backupCount=backups)

    def _open(self) -> io.TextIOWrapper:
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.fchmod(fd, 0o600)  # the umask cannot widen it; an existing file is narrowed
        return open(fd, "a", encoding=self.encoding, errors=self.errors)  # noqa: SIM115 (the handler closes it)


class OutageFilter(logging.Filter):
    """One warning of a client library per state change of its dependency; the rest counted."""

    def __init__(self) -> None:
        super().__init__()
        self._open = dict.fromkeys(LOG_SOURCES, True)  # the next warning of this library goes through
        self._suppressed = dict.fromkeys(LOG_SOURCES, 0)  # since the last summary

    def filter(self, record: logging.LogRecord) -> bool:
        source = record.name.partition(".")[0]
        if source not in LOG_SOURCES or record.levelno < logging.WARNING:
            return True
        if self._open[source]:
            self._open[source] = False
            return True
        self._suppressed[source] += 1
        metrics.LOG_LINES_SUPPRESSED.labels(source).inc()
        return False

    def state_changed(self, dependency: str) -> None:
        """Let the next warning about ``dependency`` through: it may say something new."""
        for source, dep in LOG_SOURCES.items():
            if dep == dependency:
                self._open[source] = True

    def take_summary(self) -> dict[str, int]:
        """What was suppressed since the last call (only the libraries that had any)."""
        counts = {source: n for source, n in self._suppressed.items() if n}
        self._suppressed = dict.fromkeys(LOG_SOURCES, 0)
        return counts


class LoggerManager(Manager):
    """Configures the root logger once; ``close()`` detaches its handlers."""

    def __init__(self, handler: DeferredHandler, listener: BatchWriter):
        self.handler = handler
        self.listener = listener
        self.outages = OutageFilter()
        handler.addFilter(self.outages)
        self._lines = listener.queue

    @classmethod
    def start(cls, cfg: LoggingConfig, stream: TextIO = sys.stdout) -> LoggerManager:
        formatter = JsonFormatter()
        writers: list[logging.Handler] = [logging.StreamHandler(stream)]
        if cfg["file"]:
            path = Path(cfg["file"])
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            writers.append(PrivateRotatingFileHandler(path, cfg["max_bytes"], cfg["backups"]))
        for writer in writers:
            writer.setFormatter(formatter)
        records: queue.SimpleQueue[logging.LogRecord | str | None] = queue.SimpleQueue()
        handler = DeferredHandler(records)
        listener = BatchWriter(records, *writers)
        listener.start()
        # What a record would otherwise gather and no line shows: the caller's frame
        # (a stack walk per record), thread and process names.
        logging._srcfile = None
        logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(cfg["level"])
        # Tornado's own access log is replaced by handlers.base.log_request.
        logging.getLogger("tornado.access").propagate = False
        for noisy in ("aiokafka", "kafka", "pymongo"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        return cls._install(cls(handler, listener))

    def line(self, logger: logging.Logger, level: int, msg: str, fields: dict[str, Any]) -> None:
        """A line of ``logger`` with ``fields`` (those that are None left out), formatted
        here and queued as UTF-8: no LogRecord, no handler, no filter (the outage filter
        is for client libraries' records). The level is the logger's, as for a record.
        One per request: a caller that leaves out what it has not saves the filtering."""
        if logger.isEnabledFor(level):
            line = head(time.time(), logging.getLevelName(level), logger.name, msg)
            line |= fields if None not in fields.values() else {k: v for k, v in fields.items() if v is not None}
            try:
                self._lines.put(orjson.dumps(line))
            except TypeError:  # what orjson refuses (an integer past 64 bits, a lone surrogate)
                self._lines.put(to_json(line))

    def summarize_suppressed(self) -> None:
        """One line saying how many client-library warnings were dropped since the last one."""
        counts = self.outages.take_summary()
        if counts:
            logging.getLogger("singleton.logs").warning("client library warnings suppressed", extra={"counts": counts})

    async def release(self) -> None:
        """Detach from the root logger, then let the thread write what is queued."""
        logging.getLogger().removeHandler(self.handler)
        self.listener.stop()
        for writer in self.listener.handlers:
            writer.close()
