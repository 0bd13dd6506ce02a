"""/api/v1/users against real MariaDB, Redis and Kafka."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from managers.mysql import MySQLManager

MISSING = "00000000-0000-4000-8000-000000000000"


def email() -> str:
    return f"{uuid.uuid4().hex}@example.com"


@pytest.mark.gen_test
async def test_create_then_get(api):
    address = email()
    code, user, headers = await api.post("/api/v1/users", {"email": address, "name": "Ada Lovelace"})
    assert code == 201
    assert set(user) == {"id", "email", "name", "metadata", "version", "created_at", "updated_at"}
    assert user["email"] == address and user["name"] == "Ada Lovelace" and user["version"] == 1
    assert user["created_at"].endswith("Z") and user["created_at"] == user["updated_at"]
    assert headers["Location"] == f"/api/v1/users/{user['id']}"
    assert headers["ETag"] == '"1"'

    code, fetched, headers = await api.get(f"/api/v1/users/{user['id']}")
    assert code == 200 and fetched == user
    assert headers["ETag"] == '"1"'


@pytest.mark.gen_test
async def test_email_is_normalized_and_unique(api):
    local = uuid.uuid4().hex
    code, user, _ = await api.post("/api/v1/users", {"email": f"{local}@Example.COM", "name": "A"})
    assert code == 201 and user["email"] == f"{local}@example.com"
    code, body, _ = await api.post("/api/v1/users", {"email": f"{local.upper()}@example.com", "name": "B"})
    assert code == 409 and body["error"]["code"] == "email_taken"


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "path", [f"/api/v1/users/{MISSING}", "/api/v1/users/not-a-uuid", "/api/v1/users/1%27%20OR%201=1"]
)
async def test_unknown_user_is_404(api, path):
    code, body, _ = await api.get(path)
    assert code == 404 and body["error"]["code"] == "not_found"


@pytest.mark.gen_test
async def test_partial_update(api):
    user = await api.new_user(name="Before")
    code, updated, headers = await api.put(f"/api/v1/users/{user['id']}", {"name": "After"})
    assert code == 200
    assert updated["name"] == "After" and updated["email"] == user["email"]
    assert updated["version"] == 2 and headers["ETag"] == '"2"'
    # The change moved updated_at on (two requests and their commits apart: at least a millisecond).
    assert updated["updated_at"] > user["updated_at"] and updated["created_at"] == user["created_at"]
    code, fetched, _ = await api.get(f"/api/v1/users/{user['id']}")
    assert fetched == updated


@pytest.mark.gen_test
async def test_a_user_is_sent_again_only_once_it_changed(api):
    """If-None-Match naming the current ETag (alone, in a list, or weak) gets 304 and no body."""
    user = await api.new_user(name="Before")
    path = f"/api/v1/users/{user['id']}"
    for tags in ('"1"', '"7", "1"', 'W/"1"', "*"):
        code, body, headers = await api.get(path, headers={"If-None-Match": tags})
        assert (code, body, headers["ETag"]) == (304, None, '"1"'), tags
    code, body, _ = await api.get(path, headers={"If-None-Match": '"2"'})
    assert code == 200 and body == user
    await api.put(path, {"name": "After"})
    code, body, headers = await api.get(path, headers={"If-None-Match": '"1"'})
    assert code == 200 and body["name"] == "After" and headers["ETag"] == '"2"'


@pytest.mark.gen_test
async def test_update_with_no_change_keeps_the_version(api):
    user = await api.new_user(name="Same")
    code, same, _ = await api.put(f"/api/v1/users/{user['id']}", {"name": "Same"})
    assert code == 200 and same == user


@pytest.mark.gen_test
async def test_update_to_a_taken_email_is_409_and_unknown_is_404(api):
    first, second = await api.new_user(), await api.new_user()
    code, body, _ = await api.put(f"/api/v1/users/{second['id']}", {"email": first["email"]})
    assert (code, body["error"]["code"]) == (409, "email_taken")
    code, body, _ = await api.put(f"/api/v1/users/{MISSING}", {"name": "x"})
    assert (code, body["error"]["code"]) == (404, "not_found")


@pytest.mark.gen_test
async def test_stale_if_match_is_412(api):
    user = await api.new_user()
    path = f"/api/v1/users/{user['id']}"
    code, _, _ = await api.put(path, {"name": "One"}, headers={"If-Match": '"1"'})
    assert code == 200
    code, body, _ = await api.put(path, {"name": "Two"}, headers={"If-Match": '"1"'})
    assert code == 412 and body["error"]["code"] == "precondition_failed"
    assert body["error"]["details"] == {"current_etag": '"2"'}
    code, _, _ = await api.put(path, {"name": "Two"}, headers={"If-Match": 'W/"2"'})
    assert code == 200


@pytest.mark.gen_test
async def test_an_if_match_over_the_documented_1024_characters_is_400(api):
    user = await api.new_user()
    path = f"/api/v1/users/{user['id']}"
    tags = ", ".join(f'"{n}"' for n in range(1, 300))  # 1,983 characters, the current ETag first
    code, body, _ = await api.put(path, {"name": "Long"}, headers={"If-Match": tags})
    assert (code, body["error"]["code"]) == (400, "invalid_if_match")
    code, _, _ = await api.put(path, {"name": "Short"}, headers={"If-Match": tags[:1024]})
    assert code == 200


@pytest.mark.gen_test(timeout=60)
async def test_concurrent_updates_are_not_lost(api):
    user = await api.new_user()
    names = [f"name-{i}" for i in range(12)]
    results = await asyncio.gather(*(api.put(f"/api/v1/users/{user['id']}", {"name": n}) for n in names))
    assert all(code == 200 for code, _, _ in results)
    # Each update saw the one before it: twelve distinct versions, ending at 13.
    assert sorted(body["version"] for _, body, _ in results) == list(range(2, 14))
    code, final, _ = await api.get(f"/api/v1/users/{user['id']}")
    assert final["version"] == 13


@pytest.mark.gen_test(timeout=60)
async def test_concurrent_if_match_updates_let_exactly_one_win(api):
    user = await api.new_user()
    path = f"/api/v1/users/{user['id']}"
    results = await asyncio.gather(*(api.put(path, {"name": f"n{i}"}, headers={"If-Match": '"1"'}) for i in range(8)))
    assert sorted(code for code, _, _ in results) == [200] + [412] * 7


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "No Email"}, "email"),
        ({"email": "a@example.com"}, "name"),
        ({"email": 42, "name": "x"}, "email"),
        ({"email": "not-an-email", "name": "x"}, "email"),
        ({"email": "a@example.com", "name": ""}, "name"),
        ({"email": "a@example.com", "name": "   "}, "name"),
        ({"email": "a@example.com", "name": "x" * 201}, "name"),
        ({"email": "a" * 250 + "@example.com", "name": "x"}, "email"),
        ({"email": "a@example.com", "name": "x", "admin": True}, "<body>"),
        ([], "<body>"),
    ],
)
async def test_invalid_user_bodies_are_422_naming_the_field(api, body, field):
    code, response, _ = await api.post("/api/v1/users", body)
    assert code == 422, response
    assert response["error"]["code"] == "validation_failed"
    assert field in [d["field"] for d in response["error"]["details"]]


@pytest.mark.gen_test
async def test_empty_update_is_422(api):
    user = await api.new_user()
    code, body, _ = await api.put(f"/api/v1/users/{user['id']}", {})
    assert code == 422


@pytest.mark.gen_test
async def test_hostile_strings_are_stored_literally(api):
    nasty = "Robert'); DROP TABLE users;-- \U0001f4a9 <script>alert(1)</script>"
    user = await api.new_user(name=nasty)
    code, fetched, _ = await api.get(f"/api/v1/users/{user['id']}")
    assert code == 200 and fetched["name"] == nasty
    row = await MySQLManager.instance().home.fetchone("SELECT name FROM users WHERE id = %s", (user["id"],))
    assert row == {"name": nasty}
