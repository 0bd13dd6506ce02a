"""Personal data stays in MariaDB: a user's email reaches no event (Kafka, the outbox, the
WebSocket replay), no analytics document and no log line. Consumers that need it read the
user over REST."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid

import pytest
from bson import json_util

from managers.logger import JsonFormatter
from managers.mongodb import MongoManager
from managers.mysql import MySQLManager
from tests.helpers import consumer_drain, read_events, topic_consumer, wait_until


@pytest.mark.gen_test(timeout=90)
async def test_an_email_reaches_no_event_no_analytics_document_and_no_log_line(api, config, caplog):
    caplog.set_level(logging.DEBUG)
    first, second = f"first-{uuid.uuid4().hex}@example.com", f"second-{uuid.uuid4().hex}@example.com"
    consumer = await topic_consumer(config["kafka"])
    try:
        user = await api.new_user(email=first, name="Private Person")
        code, updated, _ = await api.put(f"/api/v1/users/{user['id']}", {"email": second, "name": "Still Private"})
        assert code == 200 and updated["email"] == second  # the API shows it to who may see the user
        code, _, _ = await api.request("PATCH", f"/api/v1/users/{user['id']}", {"metadata": {"crm_id": "c-42"}})
        assert code == 200
        await api.new_payment(user["id"])

        def mine(seen: list[dict]) -> list[dict]:
            return [e for e in seen if e["user_id"] == user["id"]]

        seen = await read_events(consumer, lambda s: len(mine(s)) >= 4)
        seen += await consumer_drain(consumer, 500)
    finally:
        await asyncio.wait_for(consumer.stop(), 15)
    events = mine(seen)
    assert [e["type"] for e in events] == ["user_created", "user_updated", "user_updated", "payment_created"]
    assert events[1]["data"]["name"] == "Still Private" and events[1]["data"]["version"] == 2
    assert events[2]["data"]["metadata"] == {"crm_id": "c-42"} and events[2]["data"]["version"] == 3
    assert not [e for e in events[:3] if "email" in e["data"]]

    # The analytics store has read all three; nothing it keeps of this user holds an email.
    db = MongoManager.instance().db
    ids = [e["event_id"] for e in events]

    async def markers() -> list[dict]:
        return await db.events.find({"_id": {"$in": ids}}).to_list(None)

    await wait_until(lambda: _has(markers, 4), timeout=30, what="the analytics consumer's markers")
    documents = [*await markers(), *await db.user_totals.find({"_id": user["id"]}).to_list(None)]
    assert len(documents) == 5

    outbox = await MySQLManager.instance().home.fetchall(
        "SELECT payload FROM outbox WHERE partition_key = %s", (user["id"],)
    )
    assert len(outbox) == 4
    logged = "\n".join(JsonFormatter().format(record) for record in caplog.records)
    assert logged  # the requests were logged (the access lines), just not the email
    for where, blob in (
        ("kafka", json.dumps(seen).encode()),
        ("analytics", json_util.dumps(documents).encode()),
        ("outbox", json.dumps(outbox).encode()),
        ("logs", logged.encode()),
    ):
        for email in (first, second):
            assert email.encode() not in blob, (where, email)
            assert email.split("@")[0].encode() not in blob, (where, email)


async def _has(markers, n: int) -> bool:
    return len(await markers()) >= n
