"""LoggerManager: structured JSON lines to stdout and a rotating file.

Every line inside a request carries that request's id, taken from a context
variable that ``handlers.base.BaseHandler.prepare`` sets.
"""

from __future__ import annotations

import contextvars
import json
import logging
import logging.handlers
import sys
import time
from pathlib import Path
from typing import TextIO

from managers.base import Manager

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

# Attributes every LogRecord has; anything else passed in ``extra=`` is emitted as a field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = request_id_var.get()
        if rid is not None:
            line["request_id"] = rid
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class LoggerManager(Manager):
    """Configures the root logger once; ``close()`` detaches its handlers."""

    def __init__(self, handlers: list[logging.Handler]):
        self.handlers = handlers

    @classmethod
    def start(cls, cfg: dict, stream: TextIO = sys.stdout) -> LoggerManager:
        formatter = JsonFormatter()
        handlers: list[logging.Handler] = [logging.StreamHandler(stream)]
        if cfg["file"]:
            path = Path(cfg["file"])
            path.parent.mkdir(parents=True, exist_ok=True)
            handlers.append(
                logging.handlers.RotatingFileHandler(path, maxBytes=cfg["max_bytes"], backupCount=cfg["backups"])
            )
        root = logging.getLogger()
        for h in handlers:
            h.setFormatter(formatter)
            root.addHandler(h)
        root.setLevel(cfg["level"])
        # Tornado's own access log is replaced by handlers.base.log_request.
        logging.getLogger("tornado.access").propagate = False
        for noisy in ("aiokafka", "kafka", "pymongo"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        inst = cls(handlers)
        cls._install(inst)
        return inst

    def close(self) -> None:
        root = logging.getLogger()
        for h in self.handlers:
            root.removeHandler(h)
            h.close()
        type(self)._uninstall()
