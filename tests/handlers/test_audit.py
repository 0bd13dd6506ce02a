"""The audit trail on the real MariaDB: every audited action writes exactly one row, in its
change's transaction, naming the key, the request id and the address; GET /api/v1/audit-events
reads it back in pages, filtered by resource."""

from __future__ import annotations

import json
import uuid

import pytest

from domain import audit, auth, payments
from managers.mysql import MySQLManager

HERE = "127.0.0.1"  # the test client's address, as the server sees it


def request_id() -> str:
    return f"audit-test-{uuid.uuid4().hex}"


async def rows_of(resource_id: str) -> list[dict]:
    """Every audit row of a resource, oldest first, straight from the table."""
    return await MySQLManager.instance().home.fetchall(
        "SELECT * FROM audit_events WHERE resource_id = %s ORDER BY created_at, id", (resource_id,)
    )


async def key_id_of(key: str) -> str:
    principal = await auth.Authenticator.instance().authenticate(key)
    assert principal is not None
    return principal.key_id


def assert_row(row: dict, action: str, actor_key_id: str, rid: str, changes: dict) -> None:
    assert row["action"] == action
    assert row["actor_key_id"] == actor_key_id
    assert row["request_id"] == rid
    assert row["remote_ip"] == HERE
    assert json.loads(row["changes"]) == changes


@pytest.mark.gen_test(timeout=30)
async def test_creating_and_revoking_a_key_each_write_one_row_naming_who_asked(api, admin_key):
    admin_id = await key_id_of(admin_key)
    user = await api.new_user()
    rid = request_id()
    code, created, _ = await api.post(
        "/api/v1/api-keys", {"role": "user", "user_id": user["id"]}, headers={"X-Request-ID": rid}
    )
    assert code == 201
    [row] = await rows_of(created["id"])
    assert_row(
        row,
        "api_key.created",
        admin_id,
        rid,
        {"role": {"from": None, "to": "user"}, "user_id": {"from": None, "to": user["id"]}},
    )
    assert row["resource_type"] == "api_key" and row["owner_id"] is None
    assert created["key"] not in json.dumps(row, default=str)  # never the secret

    rid = request_id()
    code, revoked, _ = await api.delete(f"/api/v1/api-keys/{created['id']}", headers={"X-Request-ID": rid})
    assert code == 200
    first, second = await rows_of(created["id"])
    assert first == row
    assert_row(second, "api_key.revoked", admin_id, rid, {"revoked_at": {"from": None, "to": revoked["revoked_at"]}})
    # Revoking again changes nothing, and records nothing.
    assert (await api.delete(f"/api/v1/api-keys/{created['id']}"))[0] == 200
    assert len(await rows_of(created["id"])) == 2


@pytest.mark.gen_test(timeout=30)
async def test_a_payment_records_its_key_and_each_status_change_writes_one_row(api, admin_key):
    admin_id = await key_id_of(admin_key)
    user = await api.new_user()
    user_api = await api.as_user(user["id"])
    user_key_id = await key_id_of(user_api.key)
    rid, idem = request_id(), uuid.uuid4().hex
    body = {"user_id": user["id"], "amount": "12.50", "currency": "EUR", "description": "secret plans"}
    headers = {"X-Request-ID": rid, "Idempotency-Key": idem}
    code, payment, _ = await user_api.post("/api/v1/payments", body, headers=headers)
    assert code == 201
    stored = await MySQLManager.instance().home.fetchone(
        "SELECT created_by_key_id FROM payments WHERE id = %s", (payment["id"],)
    )
    assert stored == {"created_by_key_id": user_key_id}
    [created] = await rows_of(payment["id"])
    assert_row(
        created,
        "payment.created",
        user_key_id,
        rid,
        {
            "user_id": {"from": None, "to": user["id"]},
            "amount": {"from": None, "to": "12.50"},
            "currency": {"from": None, "to": "EUR"},
            "status": {"from": None, "to": "pending"},
            "version": {"from": None, "to": 1},
        },
    )
    assert created["owner_id"] == user["id"]
    # A replay of the same request changes nothing: no second row.
    code, _, replay_headers = await user_api.post("/api/v1/payments", body, headers=headers)
    assert code == 201 and replay_headers["Idempotent-Replayed"] == "true"
    assert len(await rows_of(payment["id"])) == 1

    rid = request_id()
    path = f"/api/v1/payments/{payment['id']}/status"
    assert (await api.put(path, {"status": "completed"}, headers={"X-Request-ID": rid}))[0] == 200
    _, changed = await rows_of(payment["id"])
    assert_row(
        changed,
        "payment.status_changed",
        admin_id,
        rid,
        {"status": {"from": "pending", "to": "completed"}, "version": {"from": 1, "to": 2}},
    )
    # The same status again is no change, and a refused one is none either: no rows.
    assert (await api.put(path, {"status": "completed"}))[0] == 200
    assert (await api.put(path, {"status": "pending"}))[0] == 409
    assert (await user_api.put(path, {"status": "failed"}))[0] == 403
    assert len(await rows_of(payment["id"])) == 2


@pytest.mark.gen_test(timeout=30)
async def test_a_change_rolled_back_after_its_audit_row_was_written_leaves_no_row(api, monkeypatch):
    """revoke_key writes the revocation and its audit row, then reads the key back in the
    same transaction: that read failing rolls both back."""
    created = await auth.create_key(auth.ADMIN)
    monkeypatch.setattr(auth, "_COLUMNS", "id, no_such_column")
    with pytest.raises(Exception, match="no_such_column"):
        await auth.revoke_key(created["id"], audit.Actor(None, request_id(), HERE))
    monkeypatch.undo()
    assert [r["action"] for r in await rows_of(created["id"])] == ["api_key.created"]
    [key] = [k for k in await auth.list_keys() if k["id"] == created["id"]]
    assert key["revoked_at"] is None


@pytest.mark.gen_test(timeout=30)
async def test_an_audit_row_that_cannot_be_written_takes_its_change_down_with_it(api, monkeypatch):
    """The status change, its history, its event and its audit row commit together or not at all."""
    user = await api.new_user()
    payment = await api.new_payment(user["id"])
    real_insert = audit.insert

    def too_long(actor, action, *args, **kwargs):
        sql, values = real_insert(actor, action, *args, **kwargs)
        return sql, (*values[:5], "x" * 65, *values[6:])  # action is VARCHAR(64): refused

    monkeypatch.setattr(payments.audit, "insert", too_long)
    code, _, _ = await api.put(f"/api/v1/payments/{payment['id']}/status", {"status": "completed"})
    assert code >= 500
    monkeypatch.undo()
    home = MySQLManager.instance().home
    row = await home.fetchone("SELECT status, version FROM payments WHERE id = %s", (payment["id"],))
    assert row == {"status": "pending", "version": 1}
    assert not await home.fetchall("SELECT 1 FROM payment_status_history WHERE payment_id = %s", (payment["id"],))
    assert [r["action"] for r in await rows_of(payment["id"])] == ["payment.created"]


@pytest.mark.gen_test(timeout=60)
async def test_the_trail_reads_back_newest_first_in_pages_filtered_by_resource(api, admin_key):
    user = await api.new_user()
    payment = await api.new_payment(user["id"])
    path = f"/api/v1/payments/{payment['id']}/status"
    for status in ("processing", "completed", "refunded"):
        assert (await api.put(path, {"status": status}))[0] == 200
    query = f"/api/v1/audit-events?resource_type=payment&resource_id={payment['id']}"

    code, whole, _ = await api.get(query)
    assert code == 200 and whole["next_cursor"] is None
    # "refunded" is a refund of what is left (issue 18): its own action, with the refund it made.
    actions = ["payment.refunded"] + ["payment.status_changed"] * 2 + ["payment.created"]
    assert [e["action"] for e in whole["items"]] == actions
    assert whole["items"][0]["changes"]["amount_refunded"] == {"from": "0.00", "to": payment["amount"]}
    assert [e["changes"]["status"]["to"] for e in whole["items"]] == ["refunded", "completed", "processing", "pending"]
    admin_id = await key_id_of(admin_key)
    first = whole["items"][0]
    assert first["actor_key_id"] == admin_id and first["remote_ip"] == HERE
    assert first["resource_type"] == "payment" and first["resource_id"] == payment["id"]
    assert "owner_id" not in first

    # Pages of one, following next_cursor: the same rows, in the same order, once each.
    seen, cursor = [], None
    while True:
        code, page, _ = await api.get(query + "&limit=1" + (f"&cursor={cursor}" if cursor else ""))
        assert code == 200 and len(page["items"]) == 1
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == whole["items"]

    # By type: only that type's rows; by id alone: that resource's rows; unfiltered: everything.
    code, keys_page, _ = await api.get("/api/v1/audit-events?resource_type=api_key&limit=100")
    assert code == 200 and keys_page["items"]
    assert {e["resource_type"] for e in keys_page["items"]} == {"api_key"}
    code, by_id, _ = await api.get(f"/api/v1/audit-events?resource_id={payment['id']}")
    assert code == 200 and by_id["items"] == whole["items"]
    code, newest, _ = await api.get("/api/v1/audit-events?limit=4")
    assert code == 200 and newest["items"] == whole["items"]  # nothing was audited since


@pytest.mark.gen_test(timeout=30)
async def test_the_trail_is_for_admins_and_bad_queries_are_400(api):
    user = await api.new_user()
    user_api = await api.as_user(user["id"])
    code, body, _ = await user_api.get("/api/v1/audit-events")
    assert code == 403 and body["error"]["code"] == "forbidden"
    assert (await api.with_key(None).get("/api/v1/audit-events"))[0] == 401
    for query, error in (
        ("limit=0", "invalid_limit"),
        ("limit=101", "invalid_limit"),
        ("resource_type=user", "invalid_resource_type"),
        ("resource_type=payment&resource_id=nope", "invalid_resource_id"),
        ("cursor=bm90IGEgY3Vyc29y", "invalid_cursor"),
    ):
        code, body, _ = await api.get(f"/api/v1/audit-events?{query}")
        assert (code, body["error"]["code"]) == (400, error), query
