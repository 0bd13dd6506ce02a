"""A socket ends with its authority: its key revoked (4003, on every instance, within 5 s)
or its token expired (4002, after the grace) unless refreshed over the socket.

Two instances: the suite's own app, and a ``python -m service --role api`` process on the
same stack whose tokens live 3 s with a 1 s grace (the expiry tests mint there).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
import urllib.parse
import uuid
from functools import partial

import jwt
import pytest
import tornado.websocket

from domain import analytics, moves, revocations
from domain.revocations import RevocationWatch
from managers import websocket_hub
from managers.kafka_consumer import BroadcastConsumer
from managers.mysql import MySQLManager
from tests.handlers.test_ws import Client, ws_url
from tests.helpers import in_thread, metric, owner_sql, service_process, wait_healthy, wait_until

TTL_S, GRACE_S = 4, 1  # the second instance's token lifetime and expiry grace
PROMISE_S = 5  # a revoked key's sockets are closed within this, on every instance


@pytest.fixture(scope="module")
def short_lived(io_loop, services):
    """A second instance whose tokens expire after TTL_S, its sockets GRACE_S later."""
    env = {"SINGLETON_AUTH__TOKEN_TTL_S": str(TTL_S), "SINGLETON_WEBSOCKET__TOKEN_EXPIRY_GRACE_S": str(GRACE_S)}
    with service_process(io_loop, "--role", "api", env=env) as (proc, url):
        io_loop.run_sync(lambda: wait_healthy(proc, urllib.parse.urlsplit(url).port), timeout=70)
        yield url


async def key_id(api, key: str) -> str:
    _, listing, _ = await api.get("/api/v1/api-keys")
    [row] = [k for k in listing["items"] if key.startswith(k["prefix"])]
    return row["id"]


async def closed_within(clients: list[Client], seconds: float) -> list[int | None]:
    """Each client's close code, all of them read within ``seconds``."""
    deadline = time.monotonic() + seconds
    return [await client.closed(timeout=max(deadline - time.monotonic(), 0.01)) for client in clients]


async def still_open(client: Client) -> bool:
    await client.conn.write_message(json.dumps({"type": "ping"}))
    return (await client.next_frame("pong")) == {"type": "pong"}


# -- revocation ---------------------------------------------------------------------------------
@pytest.mark.gen_test(timeout=60)
async def test_revoking_a_key_closes_its_sockets_on_every_instance_within_5_s(api, short_lived):
    user = await api.new_user()
    revoked, kept = await api.as_user(user["id"]), await api.as_user(user["id"])  # two keys, one user
    here = await Client.connect(revoked, user["id"], "here")
    there = await Client.connect(revoked, user["id"], "there", base_url=short_lived)
    bystander = await Client.connect(kept, user["id"], "bystander", base_url=short_lived)
    try:
        code, body, _ = await api.delete(f"/api/v1/api-keys/{await key_id(api, revoked.key)}")  # on this instance
        assert code == 200 and body["revoked_at"] is not None
        started = time.monotonic()
        assert await closed_within([here, there], PROMISE_S) == [websocket_hub.CLOSE_KEY_REVOKED] * 2
        assert time.monotonic() - started <= PROMISE_S
        assert there.conn.close_reason == "token revoked"
        assert await still_open(bystander), "a socket whose token another key minted stays open"
        assert all(f["type"] != "api_key_revoked" for c in (here, there, bystander) for f in c.frames)
    finally:
        for client in (here, there, bystander):
            client.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_revoked_keys_token_opens_no_socket_and_refreshes_none(api, short_lived):
    user = await api.new_user()
    holder = await api.as_user(user["id"])
    token = await holder.ws_token(user["id"])
    socket = await Client.connect(api, user["id"], "admins")
    assert (await api.delete(f"/api/v1/api-keys/{await key_id(api, holder.key)}"))[0] == 200
    try:
        for base_url in (api.base_url, short_lived):  # the revoking instance, and the other one
            conn = await tornado.websocket.websocket_connect(ws_url(base_url, token=token, client_id="late"))
            client = Client(conn)
            assert await client.closed() == websocket_hub.CLOSE_KEY_REVOKED
            assert client.frames == [], "closed before it was connected"
        await socket.conn.write_message(json.dumps({"type": "refresh", "token": token}))
        error = await socket.next_frame("error")
        assert error["error"] == {"code": "invalid_token", "message": "the token's key is revoked"}
        assert await still_open(socket)
    finally:
        socket.close()


@pytest.mark.gen_test(timeout=60)
async def test_with_this_instances_reader_stuck_the_mariadb_poll_still_closes_within_5_s(api, monkeypatch):
    """Kafka behind, or this instance's reader stuck: the backstop reads the revocation."""
    user = await api.new_user()
    holder = await api.as_user(user["id"])
    client = await Client.connect(holder, user["id"], "behind")

    async def fetches_nothing() -> int:
        await asyncio.sleep(0.2)
        return 0

    monkeypatch.setattr(BroadcastConsumer.instance(), "read_batch", fetches_nothing)
    try:
        assert (await api.delete(f"/api/v1/api-keys/{await key_id(api, holder.key)}"))[0] == 200
        assert await closed_within([client], PROMISE_S) == [websocket_hub.CLOSE_KEY_REVOKED]
    finally:
        client.close()


@pytest.mark.gen_test(timeout=60)
async def test_with_the_poll_stopped_the_kafka_event_alone_closes_the_socket(api, monkeypatch):
    user = await api.new_user()
    holder = await api.as_user(user["id"])
    client = await Client.connect(holder, user["id"], "kafka-only")

    async def reads_nothing() -> int:
        return 0

    monkeypatch.setattr(RevocationWatch.instance(), "poll", reads_nothing)
    try:
        assert (await api.delete(f"/api/v1/api-keys/{await key_id(api, holder.key)}"))[0] == 200
        assert await closed_within([client], PROMISE_S) == [websocket_hub.CLOSE_KEY_REVOKED]
    finally:
        client.close()


@pytest.mark.gen_test(timeout=60)
async def test_the_revocation_event_stays_out_of_replay_and_analytics(api):
    user = await api.new_user()
    holder = await api.as_user(user["id"])
    created = (
        await MySQLManager.instance()
        .for_id(user["id"])
        .fetchone("SELECT event_id FROM outbox WHERE partition_key = %s ORDER BY id LIMIT 1", (user["id"],))
    )
    kid = await key_id(api, holder.key)
    assert (await api.delete(f"/api/v1/api-keys/{kid}"))[0] == 200
    payment = await api.new_payment(user["id"])
    # Keyed '' in the outbox, not by the user: a reconnect replays the payment only.
    row = await MySQLManager.instance().home.fetchone(
        "SELECT partition_key FROM outbox WHERE event_type = 'api_key_revoked' AND payload LIKE %s", (f"%{kid}%",)
    )
    assert row == {"partition_key": ""}
    again = await Client.connect(api, user["id"], "replayer", last_event_id=created["event_id"])  # user_created
    try:
        done = await again.next_frame("replay_complete")
        assert done["count"] == 1 and [f["type"] for f in again.frames] == [
            "connected",
            "payment_created",
            "replay_complete",
        ]
        assert again.frames[1]["data"]["id"] == payment["id"]
    finally:
        again.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_revocation_goes_through_the_shard_moves_write_guard(api, config):
    """The guard refuses outbox rows of a logical shard not at home on the server; a
    revocation's row belongs to none, so it is written even with every shard moved away."""
    holder = await api.as_user((await api.new_user())["id"])
    home = MySQLManager.instance().home
    as_owner = partial(owner_sql, config["mysql"], database=config["mysql"]["database"])
    await in_thread(as_owner, moves.GUARD, "UPDATE logical_shards SET state = 'moved'")
    try:
        code, body, _ = await api.delete(f"/api/v1/api-keys/{await key_id(api, holder.key)}")
        assert code == 200 and body["revoked_at"] is not None
    finally:
        await in_thread(
            as_owner, "UPDATE logical_shards SET state = 'home'", "DROP TRIGGER IF EXISTS outbox_shard_guard"
        )
    row = await home.fetchone("SELECT COUNT(*) AS n FROM outbox WHERE payload LIKE %s", (f"%{body['id']}%",))
    assert row == {"n": 1}


def test_analytics_skips_the_revocation_event_without_calling_it_malformed():
    errors = metric("singleton_kafka_consumer_errors_total", {"consumer": analytics.NAME})
    assert not analytics._usable(revocations.key_revoked(str(uuid.uuid4())))
    assert metric("singleton_kafka_consumer_errors_total", {"consumer": analytics.NAME}) == errors


# -- expiry and refresh -------------------------------------------------------------------------
def epoch(expires_at: str) -> float:
    return dt.datetime.fromisoformat(expires_at).timestamp()


async def short_token(api, base_url: str, user_id: str) -> tuple[str, float]:
    """A token of the short-lived instance, and when it expires (epoch seconds)."""
    code, body, _ = await api.at(base_url).post("/api/v1/ws-tokens", {"user_id": user_id})
    assert code == 201, body
    return body["token"], epoch(body["expires_at"])


async def connect(base_url: str, token: str, client_id: str) -> Client:
    conn = await tornado.websocket.websocket_connect(ws_url(base_url, token=token, client_id=client_id))
    client = Client(conn)
    await client.next_frame("connected")
    return client


async def refresh(client: Client, token: object) -> dict:
    await client.conn.write_message(json.dumps({"type": "refresh", "token": token}))
    while True:
        frame = await client.read()
        assert frame is not None, f"closed ({client.conn.close_code}) instead of answering the refresh"
        if frame["type"] in ("refreshed", "error"):
            return frame


@pytest.mark.gen_test(timeout=60)
async def test_an_unrefreshed_socket_closes_with_4002_once_its_token_expires_plus_the_grace(api, short_lived):
    user = await api.new_user()
    token, expires = await short_token(api, short_lived, user["id"])
    client = await connect(short_lived, token, "expiring")
    assert epoch(client.frames[0]["expires_at"]) == expires  # the connected frame says when
    code = await client.closed(timeout=TTL_S + GRACE_S + 5)
    closed_at = time.time()
    assert (code, client.conn.close_reason) == (websocket_hub.CLOSE_TOKEN_EXPIRED, "token expired")
    assert expires + GRACE_S - 0.05 <= closed_at <= expires + GRACE_S + 2.5  # the sweep runs once a second


@pytest.mark.gen_test(timeout=60)
async def test_a_socket_refreshed_over_itself_outlives_its_first_token(api, short_lived):
    user = await api.new_user()
    holder = await api.as_user(user["id"])
    token, first = await short_token(holder, short_lived, user["id"])
    client = await connect(short_lived, token, "refreshing")
    # exp is in whole seconds: a token minted half a second before the first one expires ends 3 s later.
    await wait_until(lambda: time.time() >= first - 0.5, timeout=TTL_S + 1, what="the first token's last half second")
    fresh, second = await short_token(holder, short_lived, user["id"])
    assert second >= first + 3
    ack = await refresh(client, fresh)
    assert ack == {"type": "refreshed", "expires_at": ack["expires_at"]} and epoch(ack["expires_at"]) == second
    await wait_until(lambda: time.time() >= first + GRACE_S + 1.05, timeout=10, what="past the first token's end")
    assert await still_open(client)
    assert await client.closed(timeout=TTL_S + GRACE_S + 5) == websocket_hub.CLOSE_TOKEN_EXPIRED
    assert time.time() >= second + GRACE_S - 0.05, "closed at the fresh token's expiry, not the first's"


@pytest.mark.gen_test(timeout=60)
async def test_a_refresh_with_another_users_a_forged_or_an_expired_token_is_refused(api, config, short_lived):
    user, other = await api.new_user(), await api.new_user()
    token, expires = await short_token(api, short_lived, user["id"])
    client = await connect(short_lived, token, "refused")
    secret, now = config["auth"]["token_secret"], int(time.time())
    kid = await key_id(api, api.key)
    claims = {"sub": user["id"], "exp": now + 60, "jti": "j", "kid": kid}
    refused = [
        ((await short_token(api, short_lived, other["id"]))[0], "forbidden"),  # another user's
        (jwt.encode(claims, "not-our-secret-" * 3, algorithm="HS256"), "invalid_token"),  # forged
        (jwt.encode({**claims, "exp": now - 5}, secret, algorithm="HS256"), "invalid_token"),  # expired
        (jwt.encode({**claims, "kid": 7}, secret, algorithm="HS256"), "invalid_token"),  # a kid that is no key id
        (None, "invalid_token"),  # no token at all
    ]
    try:
        for bad, code in refused:
            answer = await refresh(client, bad)
            assert answer["type"] == "error" and answer["error"]["code"] == code, (bad, answer)
        # None of them moved its expiry: it ends with the token it opened with.
        assert await client.closed(timeout=TTL_S + GRACE_S + 5) == websocket_hub.CLOSE_TOKEN_EXPIRED
        assert time.time() <= expires + GRACE_S + 2.5
    finally:
        client.close()
