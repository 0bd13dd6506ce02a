"""/ws over real sockets: validation, frames, replacement, limits, slow and dead clients, replay."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
import urllib.parse
import uuid

import jwt
import pytest
import tornado.httpserver
import tornado.testing
import tornado.websocket
from tornado.httpclient import HTTPClientError, HTTPRequest

from domain.schemas import openapi
from managers import websocket_hub
from managers.kafka_producer import KafkaProducerManager
from managers.mysql import MySQLManager
from managers.websocket_hub import WebSocketHub
from service.app import make_app
from tests.helpers import metric, wait_until

MISSING = "00000000-0000-4000-8000-000000000000"


def client_ids(user_id: str) -> list[str]:
    """The client ids of the sockets the hub holds for ``user_id``."""
    return sorted(WebSocketHub.instance().by_user.get(user_id, {}))


def ws_url(base_url: str, **params: str) -> str:
    query = urllib.parse.urlencode(params)
    return base_url.replace("http://", "ws://") + "/ws?" + query


class Client:
    """A tornado WebSocket client that keeps every frame it reads."""

    def __init__(self, conn: tornado.websocket.WebSocketClientConnection):
        self.conn = conn
        self.frames: list[dict] = []

    @classmethod
    async def connect(
        cls, api, user_id: str, client_id: str | None = None, base_url: str | None = None, **extra
    ) -> Client:
        """A socket for ``user_id``, with a token that ``api``'s key obtained."""
        token = await api.ws_token(user_id)
        url = ws_url(base_url or api.base_url, token=token, client_id=client_id or uuid.uuid4().hex[:12], **extra)
        client = cls(await tornado.websocket.websocket_connect(url, connect_timeout=10))
        await client.next_frame("connected")
        return client

    async def read(self, timeout: float = 10) -> dict | None:
        message = await asyncio.wait_for(self.conn.read_message(), timeout)
        if message is None:
            return None
        frame = json.loads(message)
        self.frames.append(frame)
        return frame

    async def next_frame(self, frame_type: str, timeout: float = 10, **match) -> dict:
        """Read until a frame of this type (and matching data fields) arrives."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            frame = await self.read(max(deadline - loop.time(), 0.01))
            assert frame is not None, f"closed ({self.conn.close_code}) while waiting for {frame_type}"
            data = frame.get("data") or {}
            if frame["type"] == frame_type and all(data.get(k) == v for k, v in match.items()):
                return frame

    async def closed(self, timeout: float = 10) -> int | None:
        """Read until the server closes; return its close code."""
        while await self.read(timeout) is not None:
            pass
        return self.conn.close_code

    def close(self) -> None:
        self.conn.close()


@pytest.mark.gen_test
async def test_no_or_bad_token_is_401_before_the_upgrade(api, base_url, config):
    user = await api.new_user()
    forged = jwt.encode(
        {"sub": user["id"], "exp": int(time.time()) + 60, "jti": "x"}, "not-our-secret-" * 3, algorithm="HS256"
    )
    expired = jwt.encode(
        {"sub": user["id"], "exp": int(time.time()) - 5, "jti": "x"}, config["auth"]["token_secret"], "HS256"
    )
    admin_key_as_token = api.key
    for params in ({}, {"token": "nope"}, {"token": forged}, {"token": expired}, {"token": admin_key_as_token}):
        with pytest.raises(HTTPClientError) as caught:
            await tornado.websocket.websocket_connect(ws_url(base_url, client_id="c1", **params))
        assert caught.value.code == 401, params
        assert json.loads(caught.value.response.body)["error"]["code"] == "unauthorized"
        assert caught.value.response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.gen_test
async def test_the_token_in_an_authorization_header_works_too(api, base_url):
    user = await api.new_user()
    token = await api.ws_token(user["id"])
    request = HTTPRequest(ws_url(base_url, client_id="hdr"), headers={"Authorization": f"Bearer {token}"})
    client = Client(await tornado.websocket.websocket_connect(request))
    try:
        assert (await client.next_frame("connected"))["user_id"] == user["id"]
    finally:
        client.close()


@pytest.mark.gen_test
async def test_another_users_id_is_403_so_no_cross_user_subscription(api, base_url):
    user, other = await api.new_user(), await api.new_user()
    token = await api.ws_token(user["id"])
    with pytest.raises(HTTPClientError) as caught:
        await tornado.websocket.websocket_connect(ws_url(base_url, token=token, user_id=other["id"], client_id="c"))
    assert caught.value.code == 403
    assert json.loads(caught.value.response.body)["error"]["code"] == "forbidden"


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({}, "invalid_client_id"),
        ({"client_id": "bad id!"}, "invalid_client_id"),
        ({"client_id": "c1\n"}, "invalid_client_id"),  # a regex's $ also matches before a final newline
        ({"client_id": "c1", "last_event_id": "x"}, "invalid_event_id"),
        ({"client_id": "c1", "last_event_id": "00000000-0000-4000-8000-000000000000\n"}, "invalid_event_id"),
    ],
)
async def test_bad_upgrade_parameters_get_json_400(api, base_url, params, code):
    token = await api.ws_token((await api.new_user())["id"])
    with pytest.raises(HTTPClientError) as caught:
        await tornado.websocket.websocket_connect(ws_url(base_url, token=token, **params))
    assert caught.value.code == 400
    assert json.loads(caught.value.response.body)["error"]["code"] == code


@pytest.mark.gen_test
async def test_a_plain_get_of_ws_is_a_json_426(http_client, base_url):
    response = await http_client.fetch(f"{base_url}/ws?client_id=c", raise_error=False)
    assert response.code == 426
    assert json.loads(response.body)["error"]["code"] == "upgrade_required"
    assert response.headers["Upgrade"] == "websocket"


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("query", "status", "code"),
    [
        ("", 400, "invalid_client_id"),
        ("client_id=", 400, "invalid_client_id"),
        ("client_id=" + "c" * 65, 400, "invalid_client_id"),
        ("client_id=c%0A", 400, "invalid_client_id"),
        ("client_id=c&client_id=bad%20id", 400, "invalid_client_id"),  # the last one counts
        ("client_id=c&user_id=nope", 400, "invalid_user_id"),
        ("client_id=c&user_id=3F2B8F0E-8A4C-4D2E-9F57-1C2D3E4F5A6B", 400, "invalid_user_id"),
        ("client_id=c&last_event_id=x", 400, "invalid_event_id"),
        ("client_id=c&token=", 401, "unauthorized"),
        ("client_id=c&token=not-a-jwt", 401, "unauthorized"),
        ("client_id=c&token=" + "a.b." + "c" * 1021, 401, "unauthorized"),
        ("client_id=c&token=a.b.c&user_id=" + MISSING + "&last_event_id=" + MISSING, 426, "upgrade_required"),
        ("client_id=c&unknown=1", 426, "upgrade_required"),
    ],
)
async def test_without_a_handshake_ws_answers_only_declared_statuses(http_client, base_url, query, status, code):
    """What a plain HTTP client (schemathesis, a curl) gets: the query is judged first,
    so a malformed one is a 400 or 401 and only a well-formed one meets the 426; each
    status is one the document declares for /ws."""
    response = await http_client.fetch(f"{base_url}/ws?{query}", raise_error=False)
    assert (response.code, json.loads(response.body)["error"]["code"]) == (status, code), response.body
    declared = openapi()["paths"]["/ws"]["get"]["responses"]
    assert str(response.code) in declared
    if status == 426:
        assert response.headers["Upgrade"] == "websocket"


@pytest.mark.gen_test
async def test_foreign_origin_is_refused(api, base_url):
    user = await api.new_user()
    token = await api.ws_token(user["id"])
    request = HTTPRequest(ws_url(base_url, token=token, client_id="c"), headers={"Origin": "https://evil.example"})
    with pytest.raises(HTTPClientError) as caught:
        await tornado.websocket.websocket_connect(request)
    assert caught.value.code == 403


@pytest.mark.gen_test
async def test_connected_ping_pong_and_unknown_messages(api, base_url):
    user = await api.new_user()
    client = await Client.connect(api, user["id"], "c1")
    try:
        connected = dict(client.frames[0])
        assert connected.pop("expires_at").endswith("Z")  # the token's (tests/handlers/test_ws_authority.py)
        assert connected == {"type": "connected", "user_id": user["id"], "client_id": "c1"}
        # next_frame skips this user's own user_created event, which may arrive meanwhile.
        await client.conn.write_message(json.dumps({"type": "ping"}))
        assert await client.next_frame("pong") == {"type": "pong"}
        await client.conn.write_message("not json at all")
        error = await client.next_frame("error")
        assert error["error"]["code"] == "unknown_message"
        await client.conn.write_message(json.dumps({"type": "ping"}))
        assert await client.next_frame("pong") == {"type": "pong"}  # still open
    finally:
        client.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_users_changes_arrive_as_kafka_envelopes(api, base_url):
    user, other = await api.new_user(), await api.new_user()
    client = await Client.connect(api, user["id"])
    try:
        payment = await api.new_payment(user["id"], amount="42.00")
        await api.new_payment(other["id"])  # not this client's
        created = await client.next_frame("payment_created", id=payment["id"])
        assert set(created) == {"event_id", "type", "version", "occurred_at", "user_id", "data"}
        assert created["user_id"] == user["id"] and created["data"] == payment
        await api.put(f"/api/v1/payments/{payment['id']}/status", {"status": "completed"})
        updated = await client.next_frame("payment_updated", id=payment["id"])
        assert updated["data"]["previous_status"] == "pending" and updated["data"]["status"] == "completed"
        await api.put(f"/api/v1/users/{user['id']}", {"name": "Renamed"})
        renamed = await client.next_frame("user_updated")
        assert renamed["data"]["name"] == "Renamed"
        assert all(f.get("user_id") == user["id"] for f in client.frames if "event_id" in f)
    finally:
        client.close()


@pytest.mark.gen_test(timeout=60)
async def test_same_client_id_replaces_the_older_connection(api, base_url):
    user = await api.new_user()
    first = await Client.connect(api, user["id"], "tab")
    second = await Client.connect(api, user["id"], "tab")
    try:
        assert await first.closed() == websocket_hub.CLOSE_REPLACED
        assert first.conn.close_reason.startswith("replaced")
        assert client_ids(user["id"]) == ["tab"]
        payment = await api.new_payment(user["id"])
        await second.next_frame("payment_created", id=payment["id"])
    finally:
        second.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_full_hub_refuses_new_connections(api, base_url, monkeypatch):
    user = await api.new_user()
    hub = WebSocketHub.instance()
    monkeypatch.setattr(hub, "max_connections", hub.count + 1)
    first = await Client.connect(api, user["id"], "a")
    try:
        url = ws_url(base_url, token=await api.ws_token(user["id"]), client_id="b")
        refused = Client(await tornado.websocket.websocket_connect(url))
        assert await refused.closed() == websocket_hub.CLOSE_TRY_AGAIN
        # The one already open is untouched.
        await first.conn.write_message(json.dumps({"type": "ping"}))
        assert await first.next_frame("pong") == {"type": "pong"}
    finally:
        first.close()


async def raw_upgrade(port: int, path: str) -> asyncio.StreamWriter:
    """A real WebSocket handshake on a plain connection that then reads nothing and
    answers no ping. The tiny reader limit makes asyncio stop reading the socket, so
    the kernel buffers fill and the server's writes back up, as with a stalled client."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1024)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 101"), head
    return writer


@pytest.mark.gen_test(timeout=60)
async def test_a_slow_client_is_closed_and_does_not_hold_up_others(api, base_url, http_port, monkeypatch):
    user = await api.new_user()
    hub = WebSocketHub.instance()
    monkeypatch.setattr(hub, "max_pending_bytes", 256 * 1024)
    fast = await Client.connect(api, user["id"], "fast")
    slow = await raw_upgrade(http_port, f"/ws?token={await api.ws_token(user['id'])}&client_id=slow")
    try:
        await wait_until(lambda: client_ids(user["id"]) == ["fast", "slow"], what="both connections registered")
        slow_closed_before = metric("singleton_websocket_slow_clients_closed_total")
        chunk = "x" * 50_000
        fast_got = 0
        for i in range(200):  # 10 MB for a client that reads nothing
            event = {
                "event_id": str(uuid.uuid4()),
                "type": "user_updated",
                "user_id": user["id"],
                "occurred_at": None,
                "data": {"i": i, "pad": chunk},
            }
            await hub.broadcast(event, json.dumps(event).encode())
            frame = await fast.next_frame("user_updated", i=i)
            fast_got += frame["data"]["i"] == i
        assert fast_got == 200, "the fast client must get every frame while the slow one backs up"
        assert metric("singleton_websocket_slow_clients_closed_total") == slow_closed_before + 1
        assert client_ids(user["id"]) == ["fast"]
    finally:
        slow.close()
        fast.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_peer_that_stops_answering_pings_is_dropped(api, config, services):
    app = make_app({**config, "websocket": {**config["websocket"], "ping_interval_s": 0.2, "ping_timeout_s": 0.5}})
    sock_listener, port = tornado.testing.bind_unused_port()
    server = tornado.httpserver.HTTPServer(app)
    server.add_sockets([sock_listener])
    user = await api.new_user()
    lost_before = metric("singleton_websocket_disconnects_total", {"reason": "lost"})
    dead = await raw_upgrade(port, f"/ws?token={await api.ws_token(user['id'])}&client_id=dead")
    try:
        await wait_until(lambda: client_ids(user["id"]) == ["dead"], what="the connection registered")
        await wait_until(lambda: client_ids(user["id"]) == [], timeout=10, what="the silent peer dropped")
        assert metric("singleton_websocket_disconnects_total", {"reason": "lost"}) == lost_before + 1
    finally:
        dead.close()
        server.stop()


async def paid_and_told(api, user_id: str, client: Client) -> tuple[dict, dict]:
    """A new payment of ``user_id``'s, and the frame that told ``client`` of it."""
    payment = await api.new_payment(user_id, amount="1.00")
    return payment, await client.next_frame("payment_created", id=payment["id"])


@pytest.mark.gen_test(timeout=60)
async def test_reconnect_with_last_event_id_replays_what_was_missed(api, base_url):
    user = await api.new_user()
    client = await Client.connect(api, user["id"], "phone")
    _, seen = await paid_and_told(api, user["id"], client)
    client.close()

    missed = [await api.new_payment(user["id"], amount=f"{n}.00") for n in (2, 3)]
    await api.put(f"/api/v1/payments/{missed[0]['id']}/status", {"status": "failed"})

    back = await Client.connect(api, user["id"], "phone", last_event_id=seen["event_id"])
    try:
        done = await back.next_frame("replay_complete")
        assert done["count"] == 3
        replayed = [f for f in back.frames if "event_id" in f]
        assert [(f["type"], f["data"]["id"]) for f in replayed] == [
            ("payment_created", missed[0]["id"]),
            ("payment_created", missed[1]["id"]),
            ("payment_updated", missed[0]["id"]),
        ]
        live = await api.new_payment(user["id"], amount="4.00")
        await back.next_frame("payment_created", id=live["id"])
        ids = [f["event_id"] for f in back.frames if "event_id" in f]
        assert len(ids) == len(set(ids)) == 4, "no duplicates between replay and live"
    finally:
        back.close()


@pytest.mark.gen_test
async def test_unknown_last_event_id_says_replay_is_unavailable(api, base_url):
    user = await api.new_user()
    client = await Client.connect(api, user["id"], last_event_id=str(uuid.uuid4()))
    try:
        frame = await client.next_frame("replay_unavailable")
        assert "refetch" in frame["message"]
    finally:
        client.close()


@pytest.mark.gen_test(timeout=60)
async def test_sockets_per_user_and_per_address_are_limited_before_the_upgrade(api, base_url, monkeypatch):
    hub = WebSocketHub.instance()
    monkeypatch.setattr(hub, "max_per_user", 2)
    user = await api.new_user()
    first, second = await Client.connect(api, user["id"], "a"), await Client.connect(api, user["id"], "b")
    try:
        token = await api.ws_token(user["id"])
        with pytest.raises(HTTPClientError) as caught:
            await tornado.websocket.websocket_connect(ws_url(base_url, token=token, client_id="c"))
        assert caught.value.code == 429
        assert json.loads(caught.value.response.body)["error"]["code"] == "too_many_sockets"
        assert caught.value.response.headers["Retry-After"]
        # Replacing one of its own sockets is not one more.
        again = await Client.connect(api, user["id"], "b")
        assert await second.closed() == websocket_hub.CLOSE_REPLACED
        again.close()

        other = await api.new_user()
        monkeypatch.setattr(hub, "max_per_ip", hub.by_ip.get("127.0.0.1", 0))
        with pytest.raises(HTTPClientError) as caught:
            other_token = await api.ws_token(other["id"])
            await tornado.websocket.websocket_connect(ws_url(base_url, token=other_token, client_id="x"))
        assert caught.value.code == 429
    finally:
        first.close()
        second.close()


@pytest.mark.gen_test(timeout=60)
async def test_an_event_published_twice_reaches_a_socket_once(api, config):
    """At-least-once Kafka: the relay may publish an event again; the hub drops the repeat."""
    user = await api.new_user()
    client = await Client.connect(api, user["id"], "once")
    try:
        _, frame = await paid_and_told(api, user["id"], client)
        row = await MySQLManager.instance().home.fetchone(
            "SELECT partition_key, payload FROM outbox WHERE event_id = %s", (frame["event_id"],)
        )
        dropped = metric("singleton_websocket_duplicate_events_dropped_total")
        # The very bytes the relay sent, sent again, as a relay retry after a lost acknowledgement would.
        await KafkaProducerManager.instance().send(row["payload"].encode(), key=row["partition_key"].encode())
        second = await api.new_payment(user["id"], amount="2.00")
        await client.next_frame("payment_created", id=second["id"])  # everything before it has arrived
        assert [f.get("event_id") for f in client.frames].count(frame["event_id"]) == 1
        assert metric("singleton_websocket_duplicate_events_dropped_total") == dropped + 1
    finally:
        client.close()
