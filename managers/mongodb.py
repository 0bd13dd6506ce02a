"""MongoManager: PyMongo's async client for the analytics store (FerretDB here).

Timeouts are set to what a request can afford: the driver's 30 s server
selection default would stall a caller for the length of an outage.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from managers.base import Manager
from managers.config import Config, MongoConfig

UNAVAILABLE = (PyMongoError, asyncio.TimeoutError)


class MongoManager(Manager):
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
