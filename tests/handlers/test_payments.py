"""/api/v1/payments against real MariaDB, Redis and Kafka."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from managers.mysql import MySQLManager

MISSING = "00000000-0000-4000-8000-000000000000"


@pytest.mark.gen_test
async def test_create_then_get_with_exact_amount(api):
    user = await api.new_user()
    # A JSON number: 100.50 must come back as exactly "100.50", never 100.5 or 100.4999...
    raw = json.dumps({"user_id": user["id"], "currency": "USD", "description": "Coffee"})[:-1] + ', "amount": 100.50}'
    code, payment, _ = await api.post("/api/v1/payments", raw=raw.encode())
    assert code == 201, payment
    assert payment["amount"] == "100.50" and payment["currency"] == "USD"
    assert payment["status"] == "pending" and payment["version"] == 1
    assert payment["user_id"] == user["id"] and payment["description"] == "Coffee"
    code, fetched, _ = await api.get(f"/api/v1/payments/{payment['id']}")
    assert code == 200 and fetched == payment
    row = await MySQLManager.instance().home.fetchone(
        "SELECT amount_minor FROM payments WHERE id = %s", (payment["id"],)
    )
    assert row == {"amount_minor": 10050}


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("amount", "currency", "shown"),
    [("0.10", "USD", "0.10"), (500, "JPY", "500"), ("1.25", "KWD", "1.250"), ("999999.99", "EUR", "999999.99")],
)
async def test_amounts_follow_the_currency_exponent(api, amount, currency, shown):
    user = await api.new_user()
    payment = await api.new_payment(user["id"], amount=amount, currency=currency)
    assert payment["amount"] == shown


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("amount", "currency", "code", "field"),
    [
        ("1.001", "USD", "invalid_amount", "amount"),
        ("1.5", "JPY", "invalid_amount", "amount"),
        ("0", "USD", "invalid_amount", "amount"),
        ("1000000.01", "USD", "amount_too_large", "amount"),
        ("10", "ABC", "unknown_currency", "currency"),
        (-1, "USD", "validation_failed", "amount"),
        ("12,50", "USD", "validation_failed", "amount"),
        ("12.50\n", "USD", "validation_failed", "amount"),
        ("10", "usd", "validation_failed", "currency"),
        (None, "USD", "validation_failed", "amount"),
    ],
)
async def test_bad_amounts_and_currencies_are_422_naming_the_field(api, amount, currency, code, field):
    user = await api.new_user()
    status, body, _ = await api.post(
        "/api/v1/payments", {"user_id": user["id"], "amount": amount, "currency": currency}
    )
    assert status == 422, body
    assert body["error"]["code"] == code
    assert [d["field"] for d in body["error"]["details"]] == [field]


# Amounts at the edges, over HTTP (the properties behind them: tests/domain/test_amount_edges.py).
# Each is the JSON text of the amount, as a client writes it.
NEAR_THE_BODY_LIMIT = 60_000  # digits: the body stays under server.max_body_bytes (64 KiB)
EDGE_REFUSALS = [
    ("1e-1000100", "USD", "validation_failed"),  # was stored as 0: the CHECK refused it, a 503
    ("1e-999999", "JPY", "validation_failed"),
    ("1E+999999999", "USD", "validation_failed"),
    ("1.00000000000000000000000000001", "USD", "invalid_amount"),  # 30 digits: was rounded to 1.00
    ("1." + "0" * 38 + "1", "USD", "invalid_amount"),  # 40 digits
    ("0.000000000000000000000000000001", "KWD", "invalid_amount"),
    ("1" + "0" * 39, "USD", "amount_too_large"),
    ("-0", "USD", "validation_failed"),
    ("0.000", "USD", "validation_failed"),
    ("0e7", "JPY", "validation_failed"),
    ("-1e-2", "USD", "validation_failed"),
    ("1" * NEAR_THE_BODY_LIMIT, "USD", "validation_failed"),
    ("0." + "0" * NEAR_THE_BODY_LIMIT + "1", "USD", "validation_failed"),
    (json.dumps("1" * NEAR_THE_BODY_LIMIT), "USD", "validation_failed"),
    ('"1.5E+2"', "USD", "validation_failed"),
    ('"0.000"', "USD", "invalid_amount"),
    ('"-0"', "USD", "validation_failed"),
    ('"100.505"', "USD", "invalid_amount"),
]


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("amount", "currency", "code"), EDGE_REFUSALS, ids=lambda v: v if len(v) < 40 else f"{v[:12]}..({len(v)} chars)"
)
async def test_amounts_at_the_edges_are_422_never_stored_rounded_or_a_503(api, amount, currency, code):
    user = await api.new_user()
    raw = f'{{"user_id": "{user["id"]}", "currency": "{currency}", "amount": {amount}}}'.encode()
    status, body, _ = await api.post("/api/v1/payments", raw=raw)
    assert (status, body["error"]["code"]) == (422, code), body
    assert [d["field"] for d in body["error"]["details"]] == ["amount"]
    assert len(body["error"]["message"]) + len(json.dumps(body["error"]["details"])) < 1000  # no echo of the input
    count = await MySQLManager.instance().home.fetchone(
        "SELECT COUNT(*) AS n FROM payments WHERE user_id = %s", (user["id"],)
    )
    assert count == {"n": 0}


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("amount", "currency", "minor", "shown"),
    [
        ("150e-2", "USD", 150, "1.50"),
        ("1.5E+2", "JPY", 150, "150"),
        ("15000000000000000000000E-23", "KWD", 150, "0.150"),
        ("100.5000000000000000000000000000000000", "USD", 10050, "100.50"),
        ("0.0001", "CLF", 1, "0.0001"),
        ("1e6", "USD", 100_000_000, "1000000.00"),
        ('"0000100.50"', "USD", 10050, "100.50"),
        ('"999999.9990"', "KWD", 999_999_999, "999999.999"),
    ],
)
async def test_exact_amounts_in_any_form_are_stored_exactly(api, amount, currency, minor, shown):
    user = await api.new_user()
    raw = f'{{"user_id": "{user["id"]}", "currency": "{currency}", "amount": {amount}}}'.encode()
    status, payment, _ = await api.post("/api/v1/payments", raw=raw)
    assert status == 201, payment
    assert payment["amount"] == shown
    row = await MySQLManager.instance().home.fetchone(
        "SELECT amount_minor FROM payments WHERE id = %s", (payment["id"],)
    )
    assert row == {"amount_minor": minor}


@pytest.mark.gen_test
async def test_unknown_user_is_422_user_not_found(api):
    code, body, _ = await api.post("/api/v1/payments", {"user_id": MISSING, "amount": "1.00", "currency": "USD"})
    assert code == 422 and body["error"]["code"] == "user_not_found"


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "body",
    [
        {"amount": "1.00", "currency": "USD"},
        {"user_id": MISSING, "amount": "1.00", "currency": "USD", "status": "completed"},
        {"user_id": "not-a-uuid", "amount": "1.00", "currency": "USD"},
        {"user_id": MISSING, "amount": "1.00", "currency": "USD", "description": "x" * 501},
        {"user_id": MISSING, "amount": {"value": 1}, "currency": "USD"},
    ],
)
async def test_malformed_payment_bodies_are_422(api, body):
    code, response, _ = await api.post("/api/v1/payments", body)
    assert code == 422 and response["error"]["code"] == "validation_failed"


@pytest.mark.gen_test
async def test_unknown_payment_is_404(api):
    for path in (f"/api/v1/payments/{MISSING}", "/api/v1/payments/nope"):
        code, body, _ = await api.get(path)
        assert (code, body["error"]["code"]) == (404, "not_found")
    code, body, _ = await api.put(f"/api/v1/payments/{MISSING}/status", {"status": "completed"})
    assert (code, body["error"]["code"]) == (404, "not_found")


@pytest.mark.gen_test
async def test_a_payment_is_sent_again_only_once_it_changed(api):
    """Its ETag is its version: If-None-Match naming it gets 304 and no body, until a change."""
    user = await api.new_user()
    payment = await api.new_payment(user["id"])
    path = f"/api/v1/payments/{payment['id']}"
    code, body, headers = await api.get(path)
    assert code == 200 and body == payment and headers["ETag"] == '"1"'
    code, body, headers = await api.get(path, headers={"If-None-Match": '"1"'})
    assert (code, body, headers["ETag"]) == (304, None, '"1"')
    await api.put(f"{path}/status", {"status": "processing"})
    code, body, headers = await api.get(path, headers={"If-None-Match": '"1"'})
    assert code == 200 and body["status"] == "processing" and headers["ETag"] == '"2"'
    await api.request("PATCH", path, {"metadata": {"order": "A-1"}})
    code, body, headers = await api.get(path, headers={"If-None-Match": '"2"'})
    assert code == 200 and body["version"] == 3 and headers["ETag"] == '"3"'


@pytest.mark.gen_test
async def test_status_follows_the_state_machine(api):
    user = await api.new_user()
    payment = await api.new_payment(user["id"])
    path = f"/api/v1/payments/{payment['id']}/status"
    for status, version in (("processing", 2), ("completed", 3), ("refunded", 4)):
        code, body, _ = await api.put(path, {"status": status})
        assert code == 200 and body["status"] == status and body["version"] == version
    code, body, _ = await api.put(path, {"status": "pending"})
    assert code == 409
    assert body["error"]["code"] == "invalid_transition"
    assert body["error"]["details"]["from"] == "refunded" and body["error"]["details"]["to"] == "pending"


@pytest.mark.gen_test
async def test_same_status_again_is_a_no_op(api):
    user = await api.new_user()
    payment = await api.new_payment(user["id"])
    path = f"/api/v1/payments/{payment['id']}/status"
    code, body, _ = await api.put(path, {"status": "pending"})
    assert code == 200 and body == payment


@pytest.mark.gen_test
async def test_invalid_transitions_are_409(api):
    user = await api.new_user()
    payment = await api.new_payment(user["id"])
    path = f"/api/v1/payments/{payment['id']}/status"
    assert (await api.put(path, {"status": "refunded"}))[0] == 409
    assert (await api.put(path, {"status": "cancelled"}))[0] == 200
    assert (await api.put(path, {"status": "completed"}))[0] == 409
    code, body, _ = await api.put(path, {"status": "lost"})
    assert code == 422 and body["error"]["code"] == "validation_failed"


@pytest.mark.gen_test(timeout=60)
async def test_concurrent_status_updates_follow_the_state_machine(api):
    user = await api.new_user()
    payment = await api.new_payment(user["id"])
    path = f"/api/v1/payments/{payment['id']}/status"
    targets = ["completed", "failed", "cancelled", "processing"] * 4
    results = await asyncio.gather(*(api.put(path, {"status": s}) for s in targets))
    code, final, _ = await api.get(f"/api/v1/payments/{payment['id']}")
    assert {c for c, _, _ in results} <= {200, 409}

    # Every move that happened left its event in the same transaction. Without the row
    # lock, two requests could both move version 1 to 2: two events with one version.
    rows = await MySQLManager.instance().home.fetchall(
        "SELECT payload FROM outbox WHERE partition_key = %s AND event_type = 'payment_updated' ORDER BY id",
        (user["id"],),
    )
    moves = [json.loads(row["payload"])["data"] for row in rows]
    moves = [m for m in moves if m["id"] == payment["id"]]
    assert [m["version"] for m in moves] == list(range(2, final["version"] + 1)), "each move its own version"
    assert final["version"] == 1 + len(moves)
    assert 1 <= len(moves) <= 2  # pending -> one of four, and from processing maybe one more
    for before, after in zip([{"status": "pending"}, *moves], moves, strict=False):
        assert after["previous_status"] == before["status"]  # a chain of legal moves, none lost
    assert final["status"] == moves[-1]["status"]
    # A 200 is a move or a no-op; its body is the payment at some version that existed.
    assert all(body["version"] <= final["version"] for c, body, _ in results if c == 200)


@pytest.mark.gen_test
async def test_idempotent_retry_returns_the_original(api):
    user = await api.new_user()
    key = uuid.uuid4().hex
    body = {"user_id": user["id"], "amount": "12.00", "currency": "EUR"}
    code, first, headers = await api.post("/api/v1/payments", body, headers={"Idempotency-Key": key})
    assert code == 201 and "Idempotent-Replayed" not in headers
    # Same meaning, other spelling of the amount: still the same request.
    code, again, headers = await api.post(
        "/api/v1/payments", {**body, "amount": "12"}, headers={"Idempotency-Key": key}
    )
    assert code == 201 and again == first and headers["Idempotent-Replayed"] == "true"
    code, page, _ = await api.get(f"/api/v1/users/{user['id']}/payments")
    assert [p["id"] for p in page["items"]] == [first["id"]]


@pytest.mark.gen_test
async def test_reused_key_with_another_body_is_422(api):
    user = await api.new_user()
    key = uuid.uuid4().hex
    body = {"user_id": user["id"], "amount": "12.00", "currency": "EUR"}
    assert (await api.post("/api/v1/payments", body, headers={"Idempotency-Key": key}))[0] == 201
    code, response, _ = await api.post(
        "/api/v1/payments", {**body, "amount": "13.00"}, headers={"Idempotency-Key": key}
    )
    assert code == 422 and response["error"]["code"] == "idempotency_key_reused"


@pytest.mark.gen_test
async def test_a_key_is_remembered_per_payment_user_too(api):
    """The key lives with the user's payments, on the user's shard: one key, two users, two payments."""
    first, second = await api.new_user(), await api.new_user()
    key = uuid.uuid4().hex
    made = [
        await api.post(
            "/api/v1/payments",
            {"user_id": u["id"], "amount": "3.00", "currency": "EUR"},
            headers={"Idempotency-Key": key},
        )
        for u in (first, second)
    ]
    assert [code for code, _, _ in made] == [201, 201]
    assert made[0][1]["id"] != made[1][1]["id"] and "Idempotent-Replayed" not in made[1][2]


@pytest.mark.gen_test(timeout=60)
async def test_concurrent_requests_with_one_key_create_one_payment(api):
    user = await api.new_user()
    key = uuid.uuid4().hex
    body = {"user_id": user["id"], "amount": "5.00", "currency": "USD"}
    results = await asyncio.gather(
        *(api.post("/api/v1/payments", body, headers={"Idempotency-Key": key}) for _ in range(10))
    )
    assert [code for code, _, _ in results] == [201] * 10
    assert len({payment["id"] for _, payment, _ in results}) == 1
    assert sum(1 for _, _, h in results if "Idempotent-Replayed" not in h) == 1
    rows = await MySQLManager.instance().home.fetchall("SELECT id FROM payments WHERE user_id = %s", (user["id"],))
    assert len(rows) == 1


@pytest.mark.gen_test
async def test_bad_idempotency_key_is_400(api):
    user = await api.new_user()
    body = {"user_id": user["id"], "amount": "5.00", "currency": "USD"}
    code, response, _ = await api.post("/api/v1/payments", body, headers={"Idempotency-Key": "k" * 256})
    assert code == 400 and response["error"]["code"] == "invalid_idempotency_key"


@pytest.mark.gen_test(timeout=60)
async def test_list_pages_newest_first_with_filter(api):
    user = await api.new_user()
    created = [await api.new_payment(user["id"], amount=f"{i + 1}.00") for i in range(25)]
    seen, sizes, cursor = [], [], None
    while True:
        query = "?limit=10" + (f"&cursor={cursor}" if cursor else "")
        code, page, _ = await api.get(f"/api/v1/users/{user['id']}/payments{query}")
        assert code == 200
        sizes.append(len(page["items"]))
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None or len(sizes) > 3:
            break
    assert sizes == [10, 10, 5], "full pages, then the rest, then no cursor"
    assert [p["id"] for p in seen] == [p["id"] for p in reversed(created)]

    await api.put(f"/api/v1/payments/{created[3]['id']}/status", {"status": "failed"})
    code, page, _ = await api.get(f"/api/v1/users/{user['id']}/payments?status=failed")
    assert [p["id"] for p in page["items"]] == [created[3]["id"]] and page["next_cursor"] is None
    code, page, _ = await api.get(f"/api/v1/users/{user['id']}/payments")
    assert len(page["items"]) == 20


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("query", "code", "error"),
    [
        ("?limit=0", 400, "invalid_limit"),
        ("?limit=101", 400, "invalid_limit"),
        ("?limit=x", 400, "invalid_limit"),
        ("?status=lost", 400, "invalid_status"),
        ("?cursor=garbage", 400, "invalid_cursor"),
    ],
)
async def test_list_rejects_bad_parameters(api, query, code, error):
    user = await api.new_user()
    status, body, _ = await api.get(f"/api/v1/users/{user['id']}/payments{query}")
    assert status == code and body["error"]["code"] == error


@pytest.mark.gen_test
async def test_list_for_unknown_user_is_404(api):
    code, body, _ = await api.get(f"/api/v1/users/{MISSING}/payments")
    assert code == 404
