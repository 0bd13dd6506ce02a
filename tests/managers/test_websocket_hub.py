"""The hub (pure logic, with stand-in sockets): its one frame for all connections, the
limits, fan-out, replay and the slow-client bound. Over real sockets: tests/handlers/test_ws.py."""

from __future__ import annotations

import asyncio
import json
import struct

import pytest

from managers import websocket_hub
from managers.websocket_hub import WebSocketHub, text_frame


def parse(frame: bytes) -> tuple[int, bytes]:
    first, second = frame[0], frame[1]
    assert second & 0x80 == 0, "a server never masks"
    length, offset = second & 0x7F, 2
    if length == 126:
        (length,), offset = struct.unpack("!H", frame[2:4]), 4
    elif length == 127:
        (length,), offset = struct.unpack("!Q", frame[2:10]), 10
    assert len(frame) == offset + length
    return first, frame[offset:]


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 200_000])
def test_text_frame_header_fits_every_length_form(size):
    payload = bytes(i % 251 for i in range(size))
    first, body = parse(text_frame(payload))
    assert first == 0x81  # FIN, text
    assert body == payload


class FakeSocket:
    """A connection that keeps what it was sent; ``stalled``: the kernel takes nothing."""

    def __init__(self, stalled: bool = False):
        self.frames: list[bytes] = []
        self.closed: tuple[int | None, str | None] | None = None
        self.stalled = stalled

    def write_frame(self, frame: bytes) -> asyncio.Future | None:
        self.frames.append(frame)
        return asyncio.get_running_loop().create_future() if self.stalled else None

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        self.closed = (code, reason)

    def messages(self) -> list[dict]:
        return [json.loads(parse(frame)[1]) for frame in self.frames]


def hub(**limits) -> WebSocketHub:
    cfg = {"max_connections": 100, "max_per_user": 10, "max_per_ip": 100, "max_pending_bytes": 10_000}
    return WebSocketHub({**cfg, "replay_max_events": 1000, "token_expiry_grace_s": 5, **limits})


def event(user_id: str, n: int) -> tuple[dict, bytes]:
    body = {"event_id": f"e{n}", "type": "payment_created", "user_id": user_id, "occurred_at": None, "data": {"n": n}}
    return body, json.dumps(body).encode()


def test_limits_per_user_per_address_and_in_all_and_a_client_id_replacing_its_socket():
    sockets = hub(max_per_user=2, max_per_ip=3, max_connections=4)
    first = sockets.add(FakeSocket(), "u1", "a", "ip1")
    sockets.add(FakeSocket(), "u1", "b", "ip1")
    assert sockets.refusal("u1", "c", "ip1") == "this user already has 2 open sockets"
    assert sockets.refusal("u1", "a", "ip1") is None, "replacing its own socket is not one more"
    sockets.add(FakeSocket(), "u2", "a", "ip1")
    assert sockets.refusal("u3", "a", "ip1") == "this address already has 3 open sockets"
    again = sockets.add(FakeSocket(), "u1", "a", "ip1")
    assert first.socket.closed == (
        websocket_hub.CLOSE_REPLACED,
        "replaced by a newer connection with the same client_id",
    )
    assert sockets.by_user["u1"]["a"] is again and (sockets.count, sockets.by_ip) == (3, {"ip1": 3})
    sockets.add(FakeSocket(), "u3", "a", "ip2")
    full = FakeSocket()
    assert sockets.add(full, "u4", "a", "ip3") is None and full.closed[0] == websocket_hub.CLOSE_TRY_AGAIN
    sockets.remove(first)  # the replaced one's own close comes later: it changes nothing
    sockets.remove(again)
    assert (sockets.count, sockets.by_ip) == (3, {"ip1": 2, "ip2": 1})


@pytest.mark.gen_test
async def test_an_event_goes_once_to_each_socket_of_its_user_only():
    sockets = hub()
    mine, mine_too, theirs = FakeSocket(), FakeSocket(), FakeSocket()
    for socket, user, client in ((mine, "u1", "a"), (mine_too, "u1", "b"), (theirs, "u2", "a")):
        sockets.go_live(sockets.add(socket, user, client, "ip"), None, None)
    await sockets.broadcast(*event("u1", 1))
    await sockets.broadcast(*event("u1", 1))  # published again by the relay: dropped
    assert mine.frames == mine_too.frames == [text_frame(event("u1", 1)[1])]
    assert theirs.frames == []


@pytest.mark.gen_test
async def test_a_reconnect_gets_what_it_missed_then_what_came_meanwhile_each_once():
    sockets = hub()
    socket = FakeSocket()
    conn = sockets.add(socket, "u1", "phone", "ip")
    await sockets.broadcast(*event("u1", 3))  # live while the replay is read: held
    await sockets.broadcast(*event("u1", 4))
    missed = [(f"e{n}", event("u1", n)[1]) for n in (1, 2, 3)]  # the replay reached e3 too
    sockets.go_live(conn, "e0", missed)
    await sockets.broadcast(*event("u1", 5))
    kinds = [(m["type"], m.get("data", {}).get("n", m.get("count"))) for m in socket.messages()]
    assert kinds == [
        ("payment_created", 1),
        ("payment_created", 2),
        ("payment_created", 3),
        ("replay_complete", 3),
        ("payment_created", 4),
        ("payment_created", 5),
    ]


@pytest.mark.gen_test
async def test_a_socket_whose_unsent_data_passes_the_bound_is_closed_and_the_others_go_on():
    sockets = hub(max_pending_bytes=1000)
    slow, fast = FakeSocket(stalled=True), FakeSocket()
    for socket, client in ((slow, "slow"), (fast, "fast")):
        sockets.go_live(sockets.add(socket, "u1", client, "ip"), None, None)
    for n in range(20):  # about 120 bytes each
        await sockets.broadcast(*event("u1", n))
    assert slow.closed[0] == websocket_hub.CLOSE_SLOW and 1 <= len(slow.frames) < 20
    assert len(fast.frames) == 20 and list(sockets.by_user["u1"]) == ["fast"]


def test_a_socket_closes_when_its_token_expires_plus_the_grace_unless_refreshed():
    sockets = hub(token_expiry_grace_s=5)
    stale, fresh, legacy = FakeSocket(), FakeSocket(), FakeSocket()
    sockets.add(stale, "u1", "a", "ip", "k1", 1000.0)
    kept = sockets.add(fresh, "u1", "b", "ip", "k1", 1000.0)
    sockets.add(legacy, "u2", "a", "ip")  # no expiry known: the hub never closes it for one
    assert sockets.refresh(kept, "k2", 1100.0)
    assert sockets.close_expired(now=1004.9) == 0 and stale.closed is None
    assert sockets.close_expired(now=1005.0) == 1
    assert stale.closed == (websocket_hub.CLOSE_TOKEN_EXPIRED, "token expired")
    assert fresh.closed is None and kept.key_id == "k2", "the refresh moved its expiry and its key"
    assert sockets.close_expired(now=1104.9) == 0
    assert sockets.close_expired(now=1105.0) == 1 and fresh.closed[0] == websocket_hub.CLOSE_TOKEN_EXPIRED
    assert legacy.closed is None and sockets.count == 1 and sockets._expiries == []


def test_revoking_a_key_closes_its_sockets_only_and_refuses_its_tokens_after():
    sockets = hub()
    mine, mine_by_other_key, theirs = FakeSocket(), FakeSocket(), FakeSocket()
    sockets.add(mine, "u1", "a", "ip", "k1", 2e9)
    other = sockets.add(mine_by_other_key, "u1", "b", "ip", "k2", 2e9)
    sockets.add(theirs, "u2", "a", "ip", "k3", 2e9)
    assert sockets.close_key("k1") == 1 and sockets.close_key("k1") == 0  # the event, then the poll
    assert mine.closed == (websocket_hub.CLOSE_KEY_REVOKED, "token revoked")
    assert mine_by_other_key.closed is None and theirs.closed is None and sockets.count == 2
    late = FakeSocket()  # its token was checked before the revocation reached this instance
    assert sockets.add(late, "u1", "c", "ip", "k1", 2e9) is None and late.closed[0] == websocket_hub.CLOSE_KEY_REVOKED
    assert not sockets.refresh(other, "k1", 3e9) and other.key_id == "k2", "no refresh with a revoked key's token"
    assert sockets.knows_revoked("k1") and not sockets.knows_revoked("k2")


@pytest.mark.gen_test
async def test_the_revocation_event_closes_sockets_and_reaches_no_one():
    sockets = hub()
    revoked, bystander = FakeSocket(), FakeSocket()
    sockets.go_live(sockets.add(revoked, "u1", "a", "ip", "k1", 2e9), None, None)
    sockets.go_live(sockets.add(bystander, "u1", "b", "ip", "k2", 2e9), None, None)
    body = {"event_id": "r1", "type": websocket_hub.KEY_REVOKED_EVENT, "user_id": None, "data": {"key_id": "k1"}}
    await sockets.broadcast(body, json.dumps(body).encode())
    # Even one that names a user (it never does) is acted on, not forwarded.
    await sockets.broadcast({**body, "event_id": "r2", "user_id": "u1"}, b"{}")
    assert revoked.closed[0] == websocket_hub.CLOSE_KEY_REVOKED
    assert revoked.frames == [] and bystander.frames == [] and bystander.closed is None
