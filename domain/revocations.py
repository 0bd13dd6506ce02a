"""A revoked key's sockets close on every instance, within seconds.

Revoking a key (``auth.revoke_key``) writes an ``api_key_revoked`` event (data
``{"key_id"}``, no user) to the home's outbox in the revocation's own transaction.
Two paths bring it to each instance's WebSocketHub, which closes every socket whose
token that key minted, with 4003, and remembers the key (managers/websocket_hub.py):

1. **Kafka**, the project's one path for changes: the commit wakes the relay, which
   publishes the event; every instance's BroadcastConsumer hands it to its hub, which
   acts on it and forwards it to no one. Usually well under a second.
2. **MariaDB**, the backstop: each instance's ``RevocationWatch`` reads the home's
   revocation rows every ``websocket.revocation_poll_s`` (2 s), an index range read.
   So the promise (5 s) holds while Kafka, the relay, or this instance's consumer is
   down or behind (a backlog, or a stuck reader waiting to be replaced).

The rows' partition key is ``''``: they belong to no user. Replay reads one user's key
and never meets them; a shard move's ranges of user ids never include them, and its
write guard (domain/moves.py's trigger) lets them through (``CONV('', 16, 10)`` is
NULL: no logical shard). Analytics skips every type but a user's changes.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time

from domain import events
from domain.events import Event
from managers.background import Failures
from managers.base import Manager
from managers.config import Config
from managers.mysql import MySQLManager
from managers.websocket_hub import WebSocketHub

log = logging.getLogger("singleton.revocations")

PARTITION_KEY = ""  # no user's: see the module
REREAD_S = 10.0  # rows this recent are read again: a transaction may commit after a later one
BATCH = 1000


def key_revoked(key_id: str) -> Event:
    """The event a revocation writes to the outbox (``outbox.insert`` keys it ``''``)."""
    return events.envelope(events.API_KEY_REVOKED, None, {"key_id": key_id})


class RevocationWatch(Manager):
    """This instance's poll of the home's revocation rows (the backstop, path 2)."""

    def __init__(self, config: Config):
        self.every_s: float = config["websocket"]["revocation_poll_s"]
        self.floor: int | None = None  # rows above this id are read; None until the first poll
        self._newest = 0
        self._marks: collections.deque[tuple[float, int]] = collections.deque()  # (when, newest id seen)

    @classmethod
    def start(cls, config: Config) -> RevocationWatch:
        inst = cls._install(cls(config))
        inst._run_in_background(inst._run(), "revocation-watch")
        return inst

    async def _run(self) -> None:
        db = MySQLManager.instance().home
        failures = Failures(
            "revocation_watch",
            MySQLManager.is_unavailable,
            logger=log,
            outage="revocations not read from MariaDB; Kafka still brings them",
            recovered="revocations read from MariaDB again",
        )
        while True:
            await db.ready.wait()
            try:
                await self.poll()
            except Exception as exc:
                failures.failed(exc)
            else:
                failures.succeeded()
            await asyncio.sleep(self.every_s)

    async def poll(self) -> int:
        """Close the sockets of the keys revoked since the last poll; how many keys were new
        to the hub. The first poll only finds where the rows end: a socket opened later
        with a key revoked before is refused when it opens (``Authenticator.key_revoked``)."""
        db = MySQLManager.instance().home
        if self.floor is None:
            row = await db.fetchone(
                "SELECT COALESCE(MAX(id), 0) AS id FROM outbox WHERE partition_key = %s", (PARTITION_KEY,)
            )
            self.floor = self._newest = int(row["id"]) if row else 0
            return 0
        rows = await db.fetchall(
            "SELECT id, payload FROM outbox WHERE partition_key = %s AND id > %s ORDER BY id LIMIT %s",
            (PARTITION_KEY, self.floor, BATCH),
        )
        hub, new = WebSocketHub.instance(), 0
        for row in rows:
            self._newest = max(self._newest, row["id"])
            key_id = json.loads(row["payload"]).get("data", {}).get("key_id")
            if isinstance(key_id, str) and not hub.knows_revoked(key_id):
                hub.close_key(key_id)
                new += 1
        # The floor trails the newest id seen by REREAD_S: a revocation whose id is lower
        # than one already read, but which committed after that read, is still found.
        now = time.monotonic()
        self._marks.append((now, self._newest))
        while self._marks and now - self._marks[0][0] >= REREAD_S:
            self.floor = self._marks.popleft()[1]
        return new

    async def release(self) -> None:
        await self._stop_background(1)
