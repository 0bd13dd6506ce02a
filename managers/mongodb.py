"""MongoManager: PyMongo's async client for the analytics store (FerretDB here).

Timeouts are set to what a request can afford: the driver's 30 s server
selection default would stall a caller for the length of an outage.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import ConnectionFailure, OperationFailure, PyMongoError

from managers.base import BackingService
from managers.config import Config, MongoConfig

# What the API answers with 503.
UNAVAILABLE = (PyMongoError, asyncio.TimeoutError)
# For a background loop, an outage is a lost or refused connection (ConnectionFailure:
# network errors, timeouts, no server selected), a server saying "not now" (the codes
# drivers retry: shutting down, stepped down, interrupted, timed out), or FerretDB saying
# its PostgreSQL is out of reach (code 1, InternalError, with the driver's dial error;
# seen by stopping PostgreSQL under FerretDB 1.24). Any other refused command is a bug.
_OUTAGE = (ConnectionFailure, asyncio.TimeoutError)
_NOT_NOW_CODES = frozenset({6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436})
_BACKEND_DOWN = re.compile(r"failed to connect|dial error|connection refused|conn closed", re.IGNORECASE)


class MongoManager(BackingService):
    dependency = "mongodb"
    unavailable = UNAVAILABLE
    log_sources = ("pymongo",)

    @classmethod
    def is_unavailable(cls, exc: BaseException) -> bool:
        if isinstance(exc, OperationFailure):
            return exc.code in _NOT_NOW_CODES or (exc.code == 1 and bool(_BACKEND_DOWN.search(str(exc))))
        return isinstance(exc, _OUTAGE)

    def __init__(self, client: AsyncMongoClient[dict[str, Any]], cfg: MongoConfig):
        self.client = client
        self.db: AsyncDatabase[dict[str, Any]] = client[cfg["database"]]
        self.timeout_s = cfg["timeout_ms"] / 1000

    @classmethod
    def start(cls, config: Config) -> MongoManager:
        """Install the manager; the client connects on first use, so MongoDB may be down now."""
        cfg = config["mongodb"]
        t = cfg["timeout_ms"]
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            cfg["uri"],
            serverSelectionTimeoutMS=t,
            connectTimeoutMS=t,
            socketTimeoutMS=t,
            waitQueueTimeoutMS=t,
            appname="singleton-service",
            tz_aware=True,
        )
        return cls._install(cls(client, cfg))

    async def ping(self) -> None:
        await asyncio.wait_for(self.client.admin.command("ping"), self.timeout_s * 2)

    async def release(self) -> None:
        await asyncio.wait_for(self.client.close(), 5)
