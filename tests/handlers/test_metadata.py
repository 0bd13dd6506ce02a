"""Metadata on payments and users against the real servers: Stripe's limits, set at
creation, merged by PATCH (an empty string removes), on every read and in events."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from tests.helpers import end_positions, read_events, topic_consumer

MISSING = "00000000-0000-4000-8000-000000000000"


@pytest.mark.gen_test
async def test_a_payments_metadata_is_set_merged_and_removed(api):
    user = await api.new_user()
    payment = await api.new_payment(user["id"], metadata={"order_id": "A-1001", "empty": ""})
    assert payment["metadata"] == {"order_id": "A-1001"}  # at creation an empty value sets nothing
    path = f"/api/v1/payments/{payment['id']}"
    code, patched, _ = await api.request("PATCH", path, {"metadata": {"channel": "web", "order_id": ""}})
    assert code == 200 and patched["metadata"] == {"channel": "web"}
    assert patched["version"] == payment["version"] + 1 and patched["status"] == "pending"
    assert (await api.get(path))[1] == patched  # the cache holds the new version
    code, same, _ = await api.request("PATCH", path, {"metadata": {"channel": "web", "gone": ""}})
    assert code == 200 and same == patched  # nothing changed: no new version
    code, page, _ = await api.get(f"/api/v1/users/{user['id']}/payments")
    assert page["items"][0]["metadata"] == {"channel": "web"}


@pytest.mark.gen_test
async def test_a_users_metadata_is_set_merged_and_removed(api):
    user = await api.new_user(metadata={"crm": "42"})
    assert user["metadata"] == {"crm": "42"}
    path = f"/api/v1/users/{user['id']}"
    code, patched, headers = await api.request("PATCH", path, {"metadata": {"crm": "", "tier": "gold"}})
    assert code == 200 and patched["metadata"] == {"tier": "gold"} and headers["ETag"] == '"2"'
    code, fetched, _ = await api.get(path)
    assert fetched == patched
    code, renamed, _ = await api.put(path, {"name": "Renamed"})  # a PUT keeps the metadata
    assert renamed["metadata"] == {"tier": "gold"}


@pytest.mark.gen_test
async def test_metadata_is_carried_in_events(api, config):
    user = await api.new_user()
    positions = await end_positions(config["kafka"])
    payment = await api.new_payment(user["id"], metadata={"k": "v"})
    await api.request("PATCH", f"/api/v1/payments/{payment['id']}", {"metadata": {"k2": "v2"}})
    await api.request("PATCH", f"/api/v1/users/{user['id']}", {"metadata": {"u": "1"}})
    consumer = await topic_consumer(config["kafka"], positions)
    try:
        seen = await read_events(consumer, lambda s: sum(e.get("user_id") == user["id"] for e in s) >= 3)
    finally:
        await asyncio.wait_for(consumer.stop(), 15)
    mine = [(e["type"], e["data"]["metadata"]) for e in seen if e.get("user_id") == user["id"]]
    assert mine == [
        ("payment_created", {"k": "v"}),
        ("payment_updated", {"k": "v", "k2": "v2"}),
        ("user_updated", {"u": "1"}),
    ]


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("metadata", "field"),
    [
        ({"k" * 41: "v"}, "metadata." + "k" * 41),
        ({"a[0]": "v"}, "metadata.a[0]"),
        ({"": "v"}, "metadata."),
        ({"key": "v" * 501}, "metadata.key"),
        ({"key": 5}, "metadata.key"),
        ({"key": "line\nbreak"}, "metadata.key"),
        ({f"k{n}": "v" for n in range(51)}, "metadata"),
        ({"bad\ud800": "v"}, "metadata.bad\\ud800"),
        ("a string", "metadata"),
    ],
)
async def test_metadata_over_the_limits_is_422_naming_the_key(api, metadata, field):
    user = await api.new_user()
    payment = await api.new_payment(user["id"])
    for method, path, body in (
        (
            "POST",
            "/api/v1/payments",
            {"user_id": user["id"], "amount": "1.00", "currency": "USD", "metadata": metadata},
        ),
        ("POST", "/api/v1/users", {"email": f"{uuid.uuid4().hex}@example.com", "name": "M", "metadata": metadata}),
        ("PATCH", f"/api/v1/payments/{payment['id']}", {"metadata": metadata}),
        ("PATCH", f"/api/v1/users/{user['id']}", {"metadata": metadata}),
    ):
        code, response, _ = await api.request(method, path, body)
        assert code == 422 and response["error"]["code"] == "validation_failed", (method, path, response)
        assert field in [d["field"] for d in response["error"]["details"]], (method, path, response)


@pytest.mark.gen_test
async def test_a_merge_past_fifty_keys_is_422_naming_the_first_key_that_does_not_fit(api):
    user = await api.new_user(metadata={f"k{n:02d}": "v" for n in range(49)})
    path = f"/api/v1/users/{user['id']}"
    code, body, _ = await api.request("PATCH", path, {"metadata": {"k00": "", "new1": "v", "new2": "v"}})
    assert code == 200 and len(body["metadata"]) == 50  # one removed, two added
    code, body, _ = await api.request("PATCH", path, {"metadata": {"new1": "w", "new3": "v", "new4": "v"}})
    assert code == 422 and body["error"]["details"][0]["field"] == "metadata.new3"
    assert len((await api.get(path))[1]["metadata"]) == 50  # nothing of the refused patch applied


@pytest.mark.gen_test
async def test_a_user_key_annotates_its_own_payments_only(api):
    user, other = await api.new_user(), await api.new_user()
    mine, theirs = await api.new_payment(user["id"]), await api.new_payment(other["id"])
    user_api = await api.as_user(user["id"])
    code, body, _ = await user_api.request("PATCH", f"/api/v1/payments/{mine['id']}", {"metadata": {"a": "b"}})
    assert code == 200 and body["metadata"] == {"a": "b"}
    for path in (f"/api/v1/payments/{theirs['id']}", f"/api/v1/users/{other['id']}", f"/api/v1/payments/{MISSING}"):
        code, body, _ = await user_api.request("PATCH", path, {"metadata": {"a": "b"}})
        assert (code, body["error"]["code"]) == (404, "not_found")
    assert (await user_api.request("PATCH", f"/api/v1/users/{user['id']}", {"metadata": {"a": "b"}}))[0] == 200


@pytest.mark.gen_test
async def test_metadata_is_part_of_an_idempotent_creates_body(api):
    user = await api.new_user()
    body, key = {"user_id": user["id"], "amount": "3.00", "currency": "USD", "metadata": {"a": "1"}}, uuid.uuid4().hex
    first = await api.post("/api/v1/payments", body, headers={"Idempotency-Key": key})
    again = await api.post("/api/v1/payments", body, headers={"Idempotency-Key": key})
    assert first[0] == again[0] == 201 and again[1] == first[1]
    other = await api.post("/api/v1/payments", {**body, "metadata": {"a": "2"}}, headers={"Idempotency-Key": key})
    assert other[0] == 422 and other[1]["error"]["code"] == "idempotency_key_reused"
