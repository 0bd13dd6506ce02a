"""Sharding by user on the real MariaDB: two physical shards as two databases of the one
server (the cluster suite, tests/cluster, runs them on two servers). The session's
MariaDB manager and relay are swapped for sharded ones for this module, and back."""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
import uuid

import pytest
from aiokafka import AIOKafkaConsumer
from tornado.simple_httpclient import HTTPStreamClosedError

from domain import auth, users
from domain.outbox import OutboxRelay
from managers import shards
from managers.mysql import MySQLManager
from managers.shards import id_range, logical_shard
from tests.helpers import (
    ROOT,
    free_port,
    fresh_database,
    restart,
    run_service,
    service_env,
    terminate,
    wait_healthy,
    wait_until,
)

A, B = "singleton_test_shard_a", "singleton_test_shard_b"
ON_A, ON_B = 7, 700  # a logical shard on each: a holds 0-511, b 512-1023
LEASE_S = 1.0


def sharded_overrides(config: dict) -> dict:
    at = {"host": config["mysql"]["host"], "port": config["mysql"]["port"]}
    return {
        "shards": {
            "global": "a",
            "physical": {
                "a": {**at, "logical": "0-511", "database": A},
                "b": {**at, "logical": "512-1023", "database": B},
            },
            "map_refresh_s": 0.2,
        },
        "users": {"email_claim_lease_s": LEASE_S},
    }


async def swap(config: dict) -> None:
    """The session's MariaDB manager and relay, closed and started again on ``config``."""
    await OutboxRelay.instance().close()  # first: its last flush needs the database
    await restart(MySQLManager, config)
    await restart(OutboxRelay, config)
    await MySQLManager.instance().wait_ready(60)


@pytest.fixture(scope="module")
def sharded(services, config, io_loop) -> dict:
    for database in (A, B):
        fresh_database(config["mysql"], database)
    overrides = sharded_overrides(config)
    sharded_config = {**config, **overrides}
    users_cfg = config["users"]
    config["users"] = overrides["users"]  # the ConfigManager's, read by domain/users.py
    io_loop.run_sync(lambda: swap(sharded_config), timeout=90)
    yield sharded_config
    io_loop.run_sync(lambda: swap(config), timeout=90)
    config["users"] = users_cfg


@pytest.fixture
def sharded_api(sharded, api, io_loop):
    """The suite's client with an admin key of the sharded home's."""
    return api.with_key(io_loop.run_sync(lambda: auth.create_key(auth.ADMIN))["key"])


@pytest.fixture
def on_shard(monkeypatch):
    """``on_shard(n)``: the users created next get ids in logical shard ``n``."""

    def place(shard: int) -> None:
        monkeypatch.setattr(users, "new_id", lambda: shards.new_id(shard))

    return place


def db(name: str):
    return MySQLManager.instance().databases[name]


async def rows(database: str, sql: str, args=()) -> list[dict]:
    return await db(database).fetchall(sql, args)


@pytest.mark.gen_test(timeout=60)
async def test_a_user_and_everything_theirs_live_on_its_shard(sharded_api, on_shard):
    api = sharded_api
    for logical, home, other in ((ON_A, "a", "b"), (ON_B, "b", "a")):
        on_shard(logical)
        user = await api.new_user()
        payment = await api.new_payment(user["id"])
        assert logical_shard(user["id"]) == logical_shard(payment["id"]) == logical
        uuid.UUID(payment["id"], version=4)  # still a version-4 UUID
        assert (await api.put(f"/api/v1/payments/{payment['id']}/status", {"status": "completed"}))[0] == 200
        for table, key, value in (
            ("users", "id", user["id"]),
            ("payments", "id", payment["id"]),
            ("payment_status_history", "payment_id", payment["id"]),
            ("audit_events", "resource_id", payment["id"]),
            ("outbox", "partition_key", user["id"]),
        ):
            assert await rows(home, f"SELECT 1 FROM {table} WHERE {key} = %s", (value,)), (table, home)
            assert not await rows(other, f"SELECT 1 FROM {table} WHERE {key} = %s", (value,)), (table, other)
        # Reads by id and the user's page find it on its shard.
        code, fetched, _ = await api.get(f"/api/v1/payments/{payment['id']}")
        assert code == 200 and fetched["status"] == "completed"
        code, page, _ = await api.get(f"/api/v1/users/{user['id']}/payments")
        assert code == 200 and [p["id"] for p in page["items"]] == [payment["id"]]
        # The email claim and the user's key live in the home (a), whoever's shard it is.
        assert await rows("a", "SELECT 1 FROM email_claims WHERE user_id = %s", (user["id"],))
        user_api = await api.as_user(user["id"])
        assert (await user_api.get(f"/api/v1/users/{user['id']}"))[0] == 200
        # The payment's audit rows, read by its id from its shard alone.
        code, trail, _ = await api.get(f"/api/v1/audit-events?resource_type=payment&resource_id={payment['id']}")
        assert code == 200
        assert [e["action"] for e in trail["items"]] == ["payment.status_changed", "payment.created"]


@pytest.mark.gen_test(timeout=60)
async def test_the_audit_trail_keeps_keys_in_the_home_and_merges_every_shard_by_time(sharded_api, on_shard):
    api, made = sharded_api, []
    for logical in (ON_A, ON_B, ON_A, ON_B):
        on_shard(logical)
        user = await api.new_user()
        made.append((await api.new_payment(user["id"]))["id"])
    code, key, _ = await api.post("/api/v1/api-keys", {"role": "admin"})
    assert code == 201
    assert await rows("a", "SELECT 1 FROM audit_events WHERE resource_id = %s", (key["id"],))
    assert not await rows("b", "SELECT 1 FROM audit_events WHERE resource_id = %s", (key["id"],))
    assert {logical_shard(p) for p in made} == {ON_A, ON_B}
    # Newest first across both shards, in pages of two: the key, then the payments in reverse.
    seen, cursor = [], None
    while len(seen) < 5:
        code, page, _ = await api.get("/api/v1/audit-events?limit=2" + (f"&cursor={cursor}" if cursor else ""))
        assert code == 200, page
        seen += page["items"]
        cursor = page["next_cursor"]
    assert [e["resource_id"] for e in seen[:5]] == [key["id"], *reversed(made)]
    code, payments_only, _ = await api.get("/api/v1/audit-events?resource_type=payment&limit=4")
    assert [e["resource_id"] for e in payments_only["items"]] == list(reversed(made))


@pytest.mark.gen_test(timeout=60)
async def test_an_idempotency_key_lives_with_the_payment_on_its_users_shard(sharded_api, on_shard):
    on_shard(ON_B)
    user = await sharded_api.new_user()
    body, key = {"user_id": user["id"], "amount": "5.00", "currency": "EUR"}, uuid.uuid4().hex
    first = await sharded_api.post("/api/v1/payments", body, headers={"Idempotency-Key": key})
    again = await sharded_api.post("/api/v1/payments", body, headers={"Idempotency-Key": key})
    assert first[0] == 201 and again[0] == 201 and again[1] == first[1]
    assert again[2]["Idempotent-Replayed"] == "true"
    stored = await rows("b", "SELECT idem_key FROM idempotency_keys WHERE idem_key LIKE %s", (f"%{key}",))
    assert [r["idem_key"] for r in stored] == [f"{user['id']}|admin:{key}"]
    assert not await rows("a", "SELECT 1 FROM idempotency_keys WHERE idem_key LIKE %s", (f"%{key}",))


@pytest.mark.gen_test(timeout=60)
async def test_a_refund_lives_on_its_payments_shard_and_its_id_names_it(sharded_api, on_shard):
    """A user of the shard that is not the home: the refund, its idempotency key, the
    payment's history row and events are all there; the refund's id names that shard."""
    api = sharded_api
    on_shard(ON_B)
    user = await api.new_user()
    payment = await api.new_payment(user["id"], amount="20.00")
    path = f"/api/v1/payments/{payment['id']}"
    assert (await api.put(f"{path}/status", {"status": "completed"}))[0] == 200
    key = uuid.uuid4().hex
    code, refund, _ = await api.post(f"{path}/refunds", {"amount": "5.00"}, headers={"Idempotency-Key": key})
    assert code == 201, refund
    assert logical_shard(refund["id"]) == ON_B
    uuid.UUID(refund["id"], version=4)
    again = await api.post(f"{path}/refunds", {"amount": "5.00"}, headers={"Idempotency-Key": key})
    assert again[0] == 201 and again[1] == refund and again[2]["Idempotent-Replayed"] == "true"
    for table, column, value in (
        ("refunds", "id", refund["id"]),
        ("payment_status_history", "refund_id", refund["id"]),
        ("idempotency_keys", "idem_key", f"{payment['id']}|admin:{key}"),
    ):
        assert await rows("b", f"SELECT 1 FROM {table} WHERE {column} = %s", (value,)), table
        assert not await rows("a", f"SELECT 1 FROM {table} WHERE {column} = %s", (value,)), table
    events = await rows("b", "SELECT event_type FROM outbox WHERE partition_key = %s ORDER BY id", (user["id"],))
    assert [e["event_type"] for e in events][-2:] == ["refund_created", "payment_updated"]
    assert (await api.get(f"/api/v1/refunds/{refund['id']}"))[1] == refund
    code, page, _ = await api.get(f"{path}/refunds")
    assert code == 200 and [r["id"] for r in page["items"]] == [refund["id"]]
    code, after, _ = await api.put(f"{path}/status", {"status": "refunded"})
    assert code == 200 and after["amount_refunded"] == "20.00"
    stored = await rows("b", "SELECT amount_refunded_minor FROM payments WHERE id = %s", (payment["id"],))
    assert stored == [{"amount_refunded_minor": 2000}]


@pytest.mark.gen_test(timeout=90)
async def test_fifty_concurrent_creates_of_one_email_on_both_shards_give_one_user(sharded_api, monkeypatch):
    placements = itertools.cycle([ON_A, ON_B])
    monkeypatch.setattr(users, "new_id", lambda: shards.new_id(next(placements)))
    email = f"race-{uuid.uuid4().hex}@example.com"
    results = await asyncio.gather(
        *(sharded_api.post("/api/v1/users", {"email": email, "name": f"racer {i}"}) for i in range(50))
    )
    codes = sorted(code for code, _, _ in results)
    assert codes == [201] + [409] * 49, codes
    assert all(body["error"]["code"] == "email_taken" for code, body, _ in results if code == 409)
    [winner] = [body for code, body, _ in results if code == 201]
    found = [*await rows("a", "SELECT id FROM users WHERE email = %s", (email,))]
    found += await rows("b", "SELECT id FROM users WHERE email = %s", (email,))
    assert [r["id"] for r in found] == [winner["id"]]
    assert await rows("a", "SELECT user_id FROM email_claims WHERE email = %s", (email,)) == [{"user_id": winner["id"]}]


@pytest.mark.gen_test(timeout=60)
async def test_changing_an_email_moves_its_claim_and_frees_the_old_one(sharded_api, on_shard):
    on_shard(ON_B)
    user = await sharded_api.new_user()
    new_email = f"moved-{uuid.uuid4().hex}@example.com"
    code, updated, _ = await sharded_api.put(f"/api/v1/users/{user['id']}", {"email": new_email})
    assert code == 200 and updated["email"] == new_email
    claims = await rows("a", "SELECT email FROM email_claims WHERE user_id = %s", (user["id"],))
    assert claims == [{"email": new_email}]
    on_shard(ON_A)  # the old email is free again, for a user on the other shard
    assert (await sharded_api.post("/api/v1/users", {"email": user["email"], "name": "next"}))[0] == 201
    other = await sharded_api.new_user()
    code, body, _ = await sharded_api.put(f"/api/v1/users/{other['id']}", {"email": new_email})
    assert code == 409 and body["error"]["code"] == "email_taken"


def claims_and_users_agree(claims: list[dict], users_found: list[dict]) -> None:
    """Every user has its email's claim; a claim with no such user is one a retry can reclaim."""
    claimed = {(c["email"], c["user_id"]) for c in claims}
    assert {(u["email"], u["id"]) for u in users_found} <= claimed


@pytest.mark.gen_test(timeout=180)
@pytest.mark.parametrize("step", ["user_create.email_claimed", "user_create.committed"])
async def test_a_create_killed_at_each_step_leaves_nothing_stuck(sharded_api, sharded, step, on_shard):
    """A real process SIGKILLed at ``step``; then a retry of the create, as a client would."""
    env = service_env(SINGLETON_CRASH_AT=step) | _sharded_env(sharded)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    child = sharded_api.at(f"http://127.0.0.1:{port}")
    try:
        await wait_healthy(proc, port)
        email = None
        for _ in range(40):  # a user on the home's shard is claimed in its one transaction
            email = f"crash-{uuid.uuid4().hex}@example.com"
            try:
                code, _, _ = await child.post("/api/v1/users", {"email": email, "name": "crash"})
            except (OSError, HTTPStreamClosedError):  # the process died mid-request
                code = None
            if proc.poll() is not None or code is None:
                break
        await wait_until(lambda: proc.poll() is not None, timeout=10, what="the SIGKILLed process gone")
        assert proc.returncode == -9, proc.returncode
    finally:
        if proc.poll() is None:
            await terminate(proc)

    found = await rows("a", "SELECT id, email FROM users WHERE email = %s", (email,))
    found += await rows("b", "SELECT id, email FROM users WHERE email = %s", (email,))
    claims = await rows("a", "SELECT email, user_id FROM email_claims WHERE email = %s", (email,))
    assert len(claims) == 1
    claims_and_users_agree(claims, found)
    if step == "user_create.committed":
        assert len(found) == 1  # the user made it: the email is taken, for good
        code, body, _ = await sharded_api.post("/api/v1/users", {"email": email, "name": "retry"})
        assert code == 409 and body["error"]["code"] == "email_taken"
        return
    assert found == []  # claimed, no user: a retry gets the email once the lease is over
    on_shard(ON_A)

    async def retried() -> bool:
        code, _, _ = await sharded_api.post("/api/v1/users", {"email": email, "name": "retry"})
        return code == 201

    await wait_until(retried, timeout=LEASE_S + 10, interval=0.2, what="the retry to take the stale claim")
    found = await rows("a", "SELECT id, email FROM users WHERE email = %s", (email,))
    claims_and_users_agree(await rows("a", "SELECT email, user_id FROM email_claims WHERE email = %s", (email,)), found)


def _sharded_env(sharded: dict) -> dict[str, str]:
    return {
        "SINGLETON_SHARDS__GLOBAL": "a",
        "SINGLETON_SHARDS__PHYSICAL": json.dumps(sharded["shards"]["physical"]),
        "SINGLETON_SHARDS__MAP_REFRESH_S": "0.2",
        "SINGLETON_USERS__EMAIL_CLAIM_LEASE_S": str(LEASE_S),
    }


async def topic_events(config: dict, user_ids: set[str]) -> list[str]:
    """The event ids on the suite's topic whose key is one of ``user_ids``, from its start."""
    consumer = AIOKafkaConsumer(
        config["kafka"]["topic"],
        bootstrap_servers=config["kafka"]["bootstrap_servers"],
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await asyncio.wait_for(consumer.start(), 15)
    try:
        parts = sorted(consumer.assignment())
        ends = await asyncio.wait_for(consumer.end_offsets(parts), 15)
        seen: list[str] = []

        async def behind() -> bool:
            return any([await consumer.position(tp) < ends[tp] for tp in parts])

        while await behind():
            batch = await asyncio.wait_for(consumer.getmany(timeout_ms=500), 15)
            for records in batch.values():
                seen += [json.loads(r.value)["event_id"] for r in records if r.key and r.key.decode() in user_ids]
        return seen
    finally:
        await asyncio.wait_for(consumer.stop(), 15)


@pytest.mark.gen_test(timeout=240)
async def test_a_logical_shard_moves_under_writes_with_nothing_lost_or_doubled(sharded_api, sharded, on_shard):
    """``python -m service shards move`` while payments keep coming for the shard's users."""
    api, logical = sharded_api, 9
    on_shard(logical)
    people = [await api.new_user() for _ in range(5)]
    accepted = [(await api.new_payment(person["id"]))["id"] for person in people]
    low, high = id_range(logical)
    refused = 0
    moving = True

    async def keep_paying() -> None:
        nonlocal refused
        for n in itertools.count():
            if not moving and n % 5 == 0:
                return
            person = people[n % len(people)]
            body = {"user_id": person["id"], "amount": "1.00", "currency": "USD"}
            key = uuid.uuid4().hex
            while True:  # a 503 during the switch is retried with the same key, as clients do
                code, payment, _ = await api.post("/api/v1/payments", body, headers={"Idempotency-Key": key})
                if code != 503:
                    break
                assert payment["error"]["code"] in ("shard_moving", "dependency_unavailable")
                refused += 1
                await asyncio.sleep(0.05)
            assert code == 201, payment
            accepted.append(payment["id"])

    writer = asyncio.create_task(keep_paying())
    await wait_until(lambda: len(accepted) >= 15, timeout=30, what="payments flowing")
    moved = await run_service(
        "shards", "move", str(logical), "--to", "b", "--grace-s", "0.5", env=service_env() | _sharded_env(sharded)
    )
    moving = False
    await asyncio.wait_for(writer, 60)
    assert moved.returncode == 0, moved.stderr
    report = json.loads(moved.stdout)
    assert report["source"] == "a" and report["target"] == "b" and report["switch_s"] < 5

    # Everything on b now, nothing left on a; every accepted payment there exactly once.
    await wait_until(lambda: MySQLManager.instance().for_logical(logical).name == "b", timeout=5, what="the new map")
    for table, key in (("users", "id"), ("payments", "id"), ("outbox", "partition_key"), ("audit_events", "owner_id")):
        assert not await rows("a", f"SELECT 1 FROM {table} WHERE {key} >= %s AND {key} < %s", (low, high)), table
    on_b = [r["id"] for r in await rows("b", "SELECT id FROM payments WHERE id >= %s AND id < %s", (low, high))]
    assert sorted(on_b) == sorted(accepted)
    # Each payment's audit row moved with it (the move deleted a's copies as the migration user).
    audited = await rows(
        "b", "SELECT resource_id FROM audit_events WHERE owner_id >= %s AND owner_id < %s", (low, high)
    )
    assert sorted(r["resource_id"] for r in audited) == sorted(accepted)
    events = await rows(
        "b",
        "SELECT event_id, published_at FROM outbox WHERE partition_key >= %s AND partition_key < %s ORDER BY id",
        (low, high),
    )
    # one payment_created per payment, one user_created per user: none lost, none doubled
    assert len(events) == len({e["event_id"] for e in events}) == len(on_b) + len(people)

    async def all_published() -> bool:
        pending = await rows(
            "b",
            "SELECT 1 FROM outbox WHERE partition_key >= %s AND partition_key < %s AND published_at IS NULL",
            (low, high),
        )
        return not pending

    await wait_until(all_published, timeout=30, what="b's relay publishing what came after the switch")
    on_topic = await topic_events(sharded, {p["id"] for p in people})
    assert sorted(on_topic) == sorted(e["event_id"] for e in events)  # each exactly once on Kafka
    # Reads and writes go on, served by b.
    assert (await api.get(f"/api/v1/payments/{accepted[0]}"))[0] == 200
    assert (await api.put(f"/api/v1/payments/{accepted[0]}/status", {"status": "completed"}))[0] == 200

    # An instance that has not read the move yet still routes to a, whose copies are gone:
    # a retry (503 shard_moving), never a 404 or a 422 for rows that exist on b.
    mysql = MySQLManager.instance()
    assert mysql._task is not None
    mysql._task.cancel()  # this instance stops reading moves (the module's managers are replaced after)
    mysql.shard_map.apply([])
    person = people[0]
    for method, path, body in (
        ("GET", f"/api/v1/users/{person['id']}/payments", None),
        ("POST", "/api/v1/payments", {"user_id": person["id"], "amount": "1.00", "currency": "USD"}),
        ("PUT", f"/api/v1/payments/{accepted[1]}/status", {"status": "completed"}),
    ):
        code, answer, headers = await api.request(method, path, body)
        assert code == 503 and answer["error"]["code"] == "shard_moving", (path, answer)
        assert headers["Retry-After"] == "1"
    await mysql.refresh_map()
    assert (await api.get(f"/api/v1/users/{person['id']}/payments"))[0] == 200
