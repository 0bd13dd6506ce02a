"""MongoManager: PyMongo's async client for the analytics store (FerretDB here).

Timeouts are set to what a request can afford: the driver's 30 s server
selection default would stall a caller for the length of an outage.
"""

from __future__ import annotations

import asyncio

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from managers.base import Manager, with_retries

UNAVAILABLE = (PyMongoError, asyncio.TimeoutError)


class MongoManager(Manager):
    def __init__(self, client: AsyncMongoClient, cfg: dict):
        self.client = client
        self.db: AsyncDatabase = client[cfg["database"]]
        self.timeout_s = cfg["timeout_ms"] / 1000

    @classmethod
    async def start(cls, cfg: dict, attempts: int = 1, retry_delay_s: float = 1.0) -> MongoManager:
        t = cfg["timeout_ms"]
        client: AsyncMongoClient = AsyncMongoClient(
            cfg["uri"],
            serverSelectionTimeoutMS=t,
            connectTimeoutMS=t,
            socketTimeoutMS=t,
            waitQueueTimeoutMS=t,
            appname="singleton-service",
            tz_aware=True,
        )
        inst = cls(client, cfg)
        try:
            await with_retries("mongodb", inst.ping, attempts, retry_delay_s)
        except BaseException:
            await client.close()
            raise
        cls._install(inst)
        return inst

    async def ping(self) -> None:
        await asyncio.wait_for(self.client.admin.command("ping"), self.timeout_s * 2)

    async def close(self) -> None:
        await asyncio.wait_for(self.client.close(), 5)
        type(self)._uninstall()
