"""API keys against the real servers: who may call what, and keys' own lifecycle."""

from __future__ import annotations

import asyncio
import re

import pytest

from domain import auth
from domain.auth import Authenticator
from managers.mysql import MySQLManager

KEY = re.compile(r"^sgl_(admin|user)_[0-9A-Za-z]{38}$")


@pytest.fixture
def world(api, io_loop):
    """Two users with a payment each, and a user key for the first."""

    async def build():
        mine, theirs = await api.new_user(), await api.new_user()
        return {
            "mine": mine,
            "theirs": theirs,
            "my_payment": await api.new_payment(mine["id"]),
            "their_payment": await api.new_payment(theirs["id"]),
            "as_me": await api.as_user(mine["id"]),
        }

    return io_loop.run_sync(build)


def calls(w: dict, who: str) -> list[tuple[str, str, dict | None, int]]:
    """Every operation against ``who``'s resources ("mine" or "theirs"), and its status
    when allowed: 201 for what creates something, 200 for the rest."""
    user, payment = w[who], w["my_payment" if who == "mine" else "their_payment"]
    return [
        ("GET", f"/api/v1/users/{user['id']}", None, 200),
        ("PUT", f"/api/v1/users/{user['id']}", {"name": "Renamed"}, 200),
        ("GET", f"/api/v1/users/{user['id']}/payments", None, 200),
        ("POST", "/api/v1/payments", {"user_id": user["id"], "amount": "1.00", "currency": "USD"}, 201),
        ("GET", f"/api/v1/payments/{payment['id']}", None, 200),
        ("GET", f"/api/v1/payments/{payment['id']}/history", None, 200),
        ("GET", f"/api/v1/analytics/users/{user['id']}", None, 200),
        ("POST", "/api/v1/ws-tokens", {"user_id": user["id"]}, 201),
    ]


ADMIN_ONLY = [
    ("POST", "/api/v1/users", {"email": "x@example.com", "name": "X"}),
    ("PUT", "/api/v1/payments/{my_payment}/status", {"status": "processing"}),
    ("GET", "/api/v1/analytics/summary", None),
    ("GET", "/api/v1/api-keys", None),
    ("POST", "/api/v1/api-keys", {"role": "admin"}),
    ("DELETE", "/api/v1/api-keys/00000000-0000-4000-8000-000000000000", None),
]


@pytest.mark.gen_test(timeout=60)
async def test_a_user_key_reaches_its_own_user_and_nothing_else(world):
    me = world["as_me"]
    for method, path, body, allowed in calls(world, "mine"):
        code, response, _ = await me.request(method, path, body)
        assert code == allowed, (method, path, response)
    for method, path, body, _ in calls(world, "theirs"):
        code, response, _ = await me.request(method, path, body)
        # As if it did not exist: the same answer an unknown id gets (in a body, the user's 422).
        expected = (422, "user_not_found") if method == "POST" else (404, "not_found")
        assert (code, response["error"]["code"]) == expected, (method, path, response)
    for method, path, body in ADMIN_ONLY:
        code, response, _ = await me.request(method, path.format(my_payment=world["my_payment"]["id"]), body)
        assert code == 403 and response["error"]["code"] == "forbidden", (method, path, response)


@pytest.mark.gen_test(timeout=60)
async def test_an_admin_key_reaches_everything(api, world):
    for who in ("mine", "theirs"):
        for method, path, body, allowed in calls(world, who):
            code, response, _ = await api.request(method, path, body)
            assert code == allowed, (method, path, response)
    code, _, _ = await api.put(f"/api/v1/payments/{world['my_payment']['id']}/status", {"status": "processing"})
    assert code == 200
    code, _, _ = await api.get("/api/v1/analytics/summary")
    assert code == 200


@pytest.mark.gen_test(timeout=60)
async def test_no_unknown_malformed_or_revoked_key_is_401_with_a_challenge(api, world):
    revoked = await api.as_user(world["mine"]["id"])
    code, created, _ = await api.get("/api/v1/api-keys")
    assert code == 200
    [row] = [k for k in created["items"] if revoked.key.startswith(k["prefix"])]
    assert (await api.delete(f"/api/v1/api-keys/{row['id']}"))[0] == 200

    forged = auth.new_key(auth.ADMIN)  # the right shape, never issued
    tampered = api.key[:-1] + ("A" if api.key[-1] != "A" else "B")  # a wrong checksum
    body = api.key[:-7] + ("A" if api.key[-7] != "A" else "B")  # a real prefix, a wrong secret, its checksum
    resummed = body + auth.checksum(body[len("sgl_admin_") :])
    for key in (None, "nope", forged, tampered, resummed, revoked.key):
        for method, path, body in [call[:3] for call in calls(world, "mine")] + ADMIN_ONLY:
            code, response, headers = await api.with_key(key).request(method, path.format(my_payment="x"), body)
            assert code == 401, (key, method, path, response)
            assert response["error"]["code"] == "unauthorized"
            assert headers["WWW-Authenticate"].startswith('Bearer realm="api"')


@pytest.mark.gen_test
async def test_public_endpoints_need_no_key(http_client, base_url):
    for path in ("/health", "/openapi.json", "/demo"):
        response = await http_client.fetch(base_url + path, raise_error=False)
        assert response.code == 200, path


@pytest.mark.gen_test
async def test_a_key_is_shown_once_and_stored_only_as_a_hash(api, world):
    code, created, headers = await api.post("/api/v1/api-keys", {"role": "user", "user_id": world["mine"]["id"]})
    assert code == 201 and KEY.match(created["key"]) and created["key"].startswith("sgl_user_")
    assert auth.well_formed(created["key"])
    assert headers["Location"] == f"/api/v1/api-keys/{created['id']}"
    assert created["prefix"] == created["key"][: len("sgl_user_") + 8]
    row = await MySQLManager.instance().home.fetchone("SELECT * FROM api_keys WHERE id = %s", (created["id"],))
    assert created["key"] not in repr(row)
    assert row["hash"] != created["key"] and len(row["hash"]) == 64

    code, listing, _ = await api.get("/api/v1/api-keys")
    assert code == 200
    [shown] = [k for k in listing["items"] if k["id"] == created["id"]]
    assert "key" not in shown and "hash" not in shown
    assert shown["role"] == "user" and shown["user_id"] == world["mine"]["id"] and shown["revoked_at"] is None
    assert created["key"] not in repr(listing)

    # The new key works, and last_used_at is written.
    assert (await api.with_key(created["key"]).get(f"/api/v1/users/{world['mine']['id']}"))[0] == 200
    row = await MySQLManager.instance().home.fetchone(
        "SELECT last_used_at FROM api_keys WHERE id = %s", (created["id"],)
    )
    assert row["last_used_at"] is not None


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"role": "user"}, "user_id"),
        ({"role": "admin", "user_id": "00000000-0000-4000-8000-000000000000"}, "role"),
        ({"role": "root"}, "role"),
        ({"role": "user", "user_id": "00000000-0000-4000-8000-000000000000"}, "user_id"),  # no such user
    ],
)
async def test_a_key_needs_a_role_that_fits_its_user(api, body, field):
    code, response, _ = await api.post("/api/v1/api-keys", body)
    assert code == 422, response
    assert [d["field"] for d in response["error"]["details"]] == [field]


@pytest.mark.gen_test
async def test_revocation_is_immediate_on_this_instance(api, world):
    me = await api.as_user(world["mine"]["id"])
    assert (await me.get(f"/api/v1/users/{world['mine']['id']}"))[0] == 200  # the verdict is now cached
    code, listing, _ = await api.get("/api/v1/api-keys")
    [row] = [k for k in listing["items"] if me.key.startswith(k["prefix"])]
    code, revoked, _ = await api.delete(f"/api/v1/api-keys/{row['id']}")
    assert code == 200 and revoked["revoked_at"] is not None
    assert (await me.get(f"/api/v1/users/{world['mine']['id']}"))[0] == 401
    # Revoking again changes nothing; an unknown id is 404.
    code, again, _ = await api.delete(f"/api/v1/api-keys/{row['id']}")
    assert code == 200 and again["revoked_at"] == revoked["revoked_at"]
    assert (await api.delete("/api/v1/api-keys/00000000-0000-4000-8000-000000000000"))[0] == 404


@pytest.mark.gen_test
async def test_checking_a_key_is_not_a_database_round_trip_per_request(api, world, monkeypatch):
    me = await api.as_user(world["mine"]["id"])
    lookups = []
    original = Authenticator._lookup

    async def counted(self, key, digest):
        lookups.append(key)
        return await original(self, key, digest)

    monkeypatch.setattr(Authenticator, "_lookup", counted)
    results = await asyncio.gather(*(me.get(f"/api/v1/users/{world['mine']['id']}") for _ in range(20)))
    assert [code for code, _, _ in results] == [200] * 20
    assert 1 <= len(lookups) <= 2, "one lookup per key per cache period, not one per request"


@pytest.mark.gen_test
async def test_status_changes_leave_an_audit_row_each_in_the_same_transaction(api, world):
    payment = world["my_payment"]
    for status in ("processing", "completed", "refunded"):
        code, _, _ = await api.put(
            f"/api/v1/payments/{payment['id']}/status", {"status": status}, headers={"X-Request-ID": f"req-{status}"}
        )
        assert code == 200
    await api.put(f"/api/v1/payments/{payment['id']}/status", {"status": "refunded"})  # no change: no row
    code, history, _ = await api.get(f"/api/v1/payments/{payment['id']}/history")
    assert code == 200 and history["version"] == 4
    assert [(h["from"], h["to"], h["version"]) for h in history["items"]] == [
        ("pending", "processing", 2),
        ("processing", "completed", 3),
        ("completed", "refunded", 4),
    ]
    admin_key_id = (await Authenticator.instance().authenticate(api.key)).key_id
    assert {h["actor_key_id"] for h in history["items"]} == {admin_key_id}
    assert [h["request_id"] for h in history["items"]] == ["req-processing", "req-completed", "req-refunded"]
    assert {h["remote_ip"] for h in history["items"]} == {"127.0.0.1"}

    # The owner sees what happened, not who in the back office did it, or from where.
    code, mine, _ = await world["as_me"].get(f"/api/v1/payments/{payment['id']}/history")
    assert code == 200 and len(mine["items"]) == 3
    assert all("actor_key_id" not in h and "remote_ip" not in h for h in mine["items"])

    # A failed change (an invalid transition) leaves no row.
    code, _, _ = await api.put(f"/api/v1/payments/{payment['id']}/status", {"status": "pending"})
    assert code == 409
    rows = await MySQLManager.instance().home.fetchall(
        "SELECT version FROM payment_status_history WHERE payment_id = %s", (payment["id"],)
    )
    assert [r["version"] for r in rows] == [2, 3, 4]


@pytest.mark.gen_test
async def test_the_access_log_names_the_key_id_never_the_key(api, world, caplog):
    me = await api.as_user(world["mine"]["id"])
    caplog.set_level("INFO", logger="singleton.access")
    await me.get(f"/api/v1/users/{world['mine']['id']}", headers={"User-Agent": "audit-test/1.0"})
    [line] = [r for r in caplog.records if r.name == "singleton.access" and r.route == "UserHandler"]
    principal = await Authenticator.instance().authenticate(me.key)
    assert line.key_id == principal.key_id and line.remote_ip == "127.0.0.1"
    assert line.user_agent == "audit-test/1.0"
    assert all(me.key not in repr(vars(r)) for r in caplog.records)


@pytest.mark.gen_test
async def test_idempotency_keys_are_scoped_to_their_caller(api, world):
    """Two tenants choosing the same Idempotency-Key neither collide nor learn of each other."""
    theirs = await api.as_user(world["theirs"]["id"])
    headers = {"Idempotency-Key": "order-1"}
    mine = {"user_id": world["mine"]["id"], "amount": "1.00", "currency": "USD"}
    code, first, _ = await world["as_me"].post("/api/v1/payments", mine, headers=headers)
    assert code == 201
    body = {"user_id": world["theirs"]["id"], "amount": "2.00", "currency": "USD"}
    code, second, replayed = await theirs.post("/api/v1/payments", body, headers=headers)
    assert code == 201 and second["id"] != first["id"] and "Idempotent-Replayed" not in replayed
