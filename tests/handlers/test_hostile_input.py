"""Inputs a fuzzer or an attacker sends: each gets a clear JSON 4xx, never a 500."""

from __future__ import annotations

import asyncio
import base64
import datetime
import email.utils
import json
import logging
import re
import urllib.parse
import uuid

import pytest
import tornado.httpserver
import tornado.testing
import tornado.websocket

from managers.websocket_hub import WebSocketHub
from service.app import make_app, server_options
from tests.handlers.test_ws import Client
from tests.helpers import NOT_RFC_3339, wait_until

DEEP = b"[" * 10_000 + b"]" * 10_000


async def error_of(response) -> tuple[int, str]:
    code, body, _ = response
    return code, body["error"]["code"]


@pytest.mark.gen_test
async def test_json_nested_10000_deep_is_a_400_as_a_body_and_as_a_cursor(api):
    user = await api.new_user()
    assert await error_of(await api.post("/api/v1/users", raw=DEEP)) == (400, "invalid_json")
    assert await error_of(await api.put(f"/api/v1/users/{user['id']}", raw=b'{"name": ' + DEEP + b"}")) == (
        400,
        "invalid_json",
    )
    cursor = base64.urlsafe_b64encode(DEEP).decode()
    assert await error_of(await api.get(f"/api/v1/users/{user['id']}/payments?cursor={cursor}")) == (
        400,
        "invalid_cursor",
    )


@pytest.mark.gen_test
async def test_json_nested_just_under_the_parser_limit_is_still_a_clean_error(api):
    # Parses, then meets the validator: an error message, not a RecursionError.
    for depth in (500, 900):
        body = b'{"email": "a@b.co", "name": ' + b"[" * depth + b"]" * depth + b"}"
        code, response, _ = await api.post("/api/v1/users", raw=body)
        assert (code, response["error"]["code"]) == (422, "validation_failed"), (depth, response)
    # At the parser's edge (Python's recursion limit less the handler's own stack, which
    # varies), the body either parses and fails validation or does not parse: each is a
    # clean answer, and the error code must be the one that goes with its status.
    body = b'{"email": "a@b.co", "name": ' + b"[" * 980 + b"]" * 980 + b"}"
    code, response, _ = await api.post("/api/v1/users", raw=body)
    assert (code, response["error"]["code"]) in {(422, "validation_failed"), (400, "invalid_json")}, response


@pytest.mark.gen_test
async def test_a_deep_websocket_message_gets_an_error_frame_and_the_socket_stays(api):
    user = await api.new_user()
    client = await Client.connect(api, user["id"])
    try:
        await client.conn.write_message(b"[" * 2000)  # within max_message_bytes, too deep to parse
        frame = await client.next_frame("error")
        assert frame["error"]["code"] == "unknown_message"
        await client.conn.write_message(json.dumps({"type": "ping"}))
        await client.next_frame("pong")
    finally:
        client.close()


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "limit", ["²", "١", "0", "101", "-1", "1e2", "5.0", "99999999999999999999", "5\n", " 5", "5\x01"]
)
async def test_limits_that_are_not_plain_digits_in_range_are_400(api, limit):
    user = await api.new_user()
    code, body, _ = await api.get(f"/api/v1/users/{user['id']}/payments?limit={urllib.parse.quote(limit)}")
    assert (code, body["error"]["code"]) == (400, "invalid_limit")


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("query", "error"),
    [
        # Times that exist, in windows that cannot be: the day before year 1 (``from`` defaults
        # to a day before ``to``), or far more than 366 days (``to`` defaults to now).
        ("to=0001-01-01T00:00:00Z", "invalid_window"),
        ("from=0001-01-01T00:00:00Z", "invalid_window"),
        # Times that fall outside the years 1 to 9999 once in UTC, or are no times at all.
        ("to=0001-01-01T00:30:00%2B01:00", "invalid_time"),
        ("from=9999-12-31T23:59:59-01:00", "invalid_time"),
        ("from=2026-01-01T00:00:00", "invalid_time"),
        ("to=yesterday", "invalid_time"),
        ("to=0000-01-01T00:00:00Z", "invalid_time"),  # RFC 3339 has a year 0; the service's times start at year 1
        ("to=9999-12-31T23:59:60Z", "invalid_time"),
    ],
)
async def test_analytics_windows_at_the_ends_of_time_are_400(api, query, error):
    code, body, _ = await api.get(f"/api/v1/analytics/summary?{query}")
    assert (code, body["error"]["code"]) == (400, error), body


@pytest.mark.gen_test
@pytest.mark.parametrize("value", NOT_RFC_3339)  # `?to=` included: a bad time, not a missing one
async def test_a_time_that_is_not_rfc_3339_is_400_invalid_time(api, value):
    code, body, _ = await api.get(f"/api/v1/analytics/summary?to={urllib.parse.quote(value)}")
    assert (code, body["error"]["code"]) == (400, "invalid_time"), body


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("to", "shown"),
    [
        # Lower case and any fraction are RFC 3339 (the summary counts whole minutes, so rounds down).
        ("2026-07-01t12:00:59.1234567z", "2026-07-01T12:00:00.000Z"),
        ("2026-06-30T23:59:60Z", "2026-07-01T00:00:00.000Z"),  # a leap second: the next day's first instant
        ("2026-07-01T01:59:60+02:00", "2026-07-01T00:00:00.000Z"),
        ("2026-07-01T00:00:00-00:00", "2026-07-01T00:00:00.000Z"),
    ],
)
async def test_every_rfc_3339_form_is_taken(api, to, shown):
    code, body, _ = await api.get(f"/api/v1/analytics/summary?to={urllib.parse.quote(to)}")
    assert code == 200, body
    assert body["to"] == shown


@pytest.mark.gen_test
async def test_an_email_that_grows_when_lower_cased_is_422(api):
    email = "a@" + "İ" * 247 + ".io"  # 252 characters; lower-cased, 499
    code, body, _ = await api.post("/api/v1/users", {"email": email, "name": "Dotted"})
    assert (code, body["error"]["code"]) == (422, "validation_failed")
    user = await api.new_user()
    code, body, _ = await api.put(f"/api/v1/users/{user['id']}", {"email": email})
    assert (code, body["error"]["code"]) == (422, "validation_failed")


@pytest.mark.gen_test
async def test_emails_are_normalised_before_they_are_checked_and_stored(api):
    local = uuid.uuid4().hex[:12].upper()
    fullwidth = "".join(chr(ord(c) + 0xFEE0) for c in local)  # 'Ａ' NFKC-normalises to 'A'
    code, user, _ = await api.post("/api/v1/users", {"email": f"{fullwidth}@Example.COM", "name": "Ada"})
    assert code == 201 and user["email"] == f"{local.lower()}@example.com"
    code, body, _ = await api.post("/api/v1/users", {"email": f"{local.lower()}@example.com", "name": "Twin"})
    assert (code, body["error"]["code"]) == (409, "email_taken")


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "text",
    [
        "evil\u202etxt.exe",
        "zero\u200bwidth",
        "bell\x07",
        "line\nbreak",
        "nul\x00",
        "isolate\u2066x",
        "bom\ufeff",
        "trailing newline\n",  # Python's $ matches before a final newline; JSON Schema's does not
    ],
)
async def test_control_and_bidi_characters_are_refused_in_names_and_descriptions(api, text):
    code, body, _ = await api.post("/api/v1/users", {"email": "c@example.com", "name": text})
    assert (code, body["error"]["code"]) == (422, "validation_failed")
    user = await api.new_user()
    payment = {"user_id": user["id"], "amount": "1.00", "currency": "USD", "description": text}
    code, body, _ = await api.post("/api/v1/payments", payment)
    assert (code, body["error"]["code"]) == (422, "validation_failed")


@pytest.mark.gen_test
@pytest.mark.parametrize("field", ["name", "email"])
async def test_a_lone_surrogate_is_refused_not_a_500(api, field):
    user = await api.new_user()
    raw = json.dumps({field: "x"}).replace('"x"', '"a\\ud800"').encode()
    code, body, _ = await api.put(f"/api/v1/users/{user['id']}", raw=raw)
    assert (code, body["error"]["code"]) == (422, "validation_failed")
    assert field in [d["field"] for d in body["error"]["details"]]


@pytest.mark.gen_test
async def test_a_lone_surrogate_in_a_payment_description_is_refused(api):
    user = await api.new_user()
    payment = {"user_id": user["id"], "amount": "1.00", "currency": "USD", "description": "x"}
    raw = json.dumps(payment).replace('"x"', '"\\udfff tail"').encode()
    code, body, _ = await api.post("/api/v1/payments", raw=raw)
    assert (code, body["error"]["code"]) == (422, "validation_failed")
    assert [d["field"] for d in body["error"]["details"]] == ["description"]


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "content_type", ["application/x-www-form-urlencoded", "text/plain", "multipart/form-data; boundary=x", ""]
)
async def test_a_body_that_is_not_json_is_415(api, content_type):
    code, body, _ = await api.post(
        "/api/v1/users", raw=b"email=a%40b.co&name=x", headers={"Content-Type": content_type}
    )
    assert (code, body["error"]["code"]) == (415, "unsupported_media_type")


@pytest.mark.gen_test
async def test_405_carries_allow_and_every_response_the_security_headers(api):
    user = await api.new_user()
    code, body, headers = await api.request("DELETE", f"/api/v1/users/{user['id']}")
    assert code == 405 and body["error"]["code"] == "method_not_allowed"
    assert set(headers["Allow"].split(", ")) == {"GET", "PUT", "PATCH", "OPTIONS"}
    for response_headers in (headers, (await api.get(f"/api/v1/users/{user['id']}"))[2]):
        assert "Server" not in response_headers
        assert response_headers["X-Content-Type-Options"] == "nosniff"
        assert response_headers["Cache-Control"] == "no-store"
        assert response_headers["Content-Type"] == "application/json; charset=utf-8"
        assert re.fullmatch(r"[0-9a-f]{32}", response_headers["X-Request-ID"])
        sent = email.utils.parsedate_to_datetime(response_headers["Date"])  # an HTTP date, of now
        assert abs((sent - datetime.datetime.now(datetime.UTC)).total_seconds()) < 5


@pytest.mark.gen_test(timeout=60)
async def test_a_thousand_invented_methods_add_no_metric_series(api):
    from prometheus_client import REGISTRY

    def series() -> int:
        return sum(len(m.samples) for m in REGISTRY.collect() if m.name == "singleton_http_requests")

    await api.request("BREW", "/api/v1/users")  # the first "other" creates its series
    before = series()
    for n in range(1000):
        code, _, _ = await api.request(f"M{n}", "/api/v1/users")
        assert code == 405
    assert series() == before


@pytest.mark.gen_test
async def test_a_ws_request_closed_before_its_handshake_logs_no_error(api, http_port, caplog):
    user = await api.new_user()
    token = await api.ws_token(user["id"])
    hub = WebSocketHub.instance()
    connections = hub.count
    caplog.set_level(logging.WARNING)
    for path in (f"/ws?token={token}&client_id=gone", "/ws?client_id=gone"):
        reader, writer = await asyncio.open_connection("127.0.0.1", http_port)
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        writer.close()  # gone before the server could answer
    # A normal socket afterwards is served, and the hub counts no ghost.
    client = await Client.connect(api, user["id"], "after")
    client.close()
    await wait_until(lambda: hub.count == connections, what="the hub back to where it was")
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


@pytest.mark.gen_test(timeout=60)
async def test_clients_that_trickle_half_a_request_line_hold_nothing(api, config, services):
    cfg = {**config, "server": {**config["server"], "idle_connection_timeout_s": 1.5}}
    sock, port = tornado.testing.bind_unused_port()
    server = tornado.httpserver.HTTPServer(make_app(cfg), **server_options(cfg))
    server.add_sockets([sock])
    stalled = []
    try:
        for _ in range(200):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /hea")  # half a request line, then nothing
            stalled.append((reader, writer))
        # Normal requests are still served meanwhile.
        code, body, _ = await api.at(f"http://127.0.0.1:{port}").get("/health")
        assert code == 200, body

        async def closed(reader) -> bool:
            return await asyncio.wait_for(reader.read(), 10) == b""

        results = await asyncio.gather(*(closed(reader) for reader, _ in stalled))
        assert all(results), "every stalled connection is closed by the server after the idle timeout"
    finally:
        for _, writer in stalled:
            writer.close()
        server.stop()


@pytest.mark.gen_test
async def test_an_unknown_method_on_an_unknown_route_is_404(api):
    code, body, _ = await api.request("FOO", "/nowhere")
    assert (code, body["error"]["code"]) == (404, "not_found")


# -- raw requests, as from outside: bytes on a socket, no client library in between --------
async def raw_request(port: int, head: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """Send ``head`` (request line and headers, without the blank line) and ``body``;
    return the status, headers (lower-cased names) and body of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.encode() + b"\r\nConnection: close\r\n\r\n" + body)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    top, _, payload = answer.partition(b"\r\n\r\n")
    status_line, *lines = top.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, payload


def _json_post(path: str, key: str, body: bytes) -> tuple[str, bytes]:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}"
    )
    return head, body


USER_BODY = b'{"email": "raw@example.com", "name": "Raw"}'
HOSTILE_BODIES = {
    "truncated": (b'{"email": "a@b.co", "name": ', 400, "invalid_json"),
    "single quotes": (b"{'email': 'a@b.co'}", 400, "invalid_json"),
    "trailing garbage": (USER_BODY + b" x", 400, "invalid_json"),
    "two documents": (USER_BODY + USER_BODY, 400, "invalid_json"),
    "invalid utf-8": (b'{"email": "\xff\xfe@b.co", "name": "x"}', 400, "invalid_json"),
    "duplicate keys": (b'{"email": "a@b.co", "name": "A", "name": "B"}', 400, "invalid_json"),
    "NaN": (b'{"amount": NaN}', 400, "invalid_json"),
    "Infinity": (b'{"amount": Infinity}', 400, "invalid_json"),
    "-Infinity": (b'{"amount": -Infinity}', 400, "invalid_json"),
    "nested 30000 deep": (b'{"name": ' + b"[" * 30_000 + b"]" * 30_000 + b"}", 400, "invalid_json"),
    "a huge exponent": (b'{"email": "a@b.co", "name": 1e999999999}', 422, "validation_failed"),
    "past Decimal's range": (b'{"email": "a@b.co", "name": 1e99999999999999999999}', 422, "validation_failed"),
    "60,000 digits": (b'{"email": "a@b.co", "name": ' + b"9" * 60_000 + b"}", 422, "validation_failed"),
    "an array": (b"[]", 422, "validation_failed"),
    "a bare number": (b"1e999999999", 422, "validation_failed"),
    "null": (b"null", 422, "validation_failed"),
    "a lone surrogate": (b'{"email": "a@b.co", "name": "\\ud800"}', 422, "validation_failed"),
}


@pytest.mark.gen_test
@pytest.mark.parametrize("case", list(HOSTILE_BODIES))
async def test_hostile_bodies_on_a_raw_socket_get_json_4xx(api, http_port, case):
    body, status, code = HOSTILE_BODIES[case]
    got, headers, payload = await raw_request(http_port, *_json_post("/api/v1/users", api.key, body))
    assert headers["content-type"].startswith("application/json"), (got, payload[:200])
    assert (got, json.loads(payload)["error"]["code"]) == (status, code), payload[:300]


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "amount", [b"NaN", b"1e999999999", b"-1e-999999", b"9" * 60_000, b"[" * 30_000 + b"]" * 30_000]
)
async def test_hostile_amounts_on_a_raw_socket_get_json_4xx(api, http_port, amount):
    user = await api.new_user()
    body = b'{"user_id": "' + user["id"].encode() + b'", "currency": "USD", "amount": ' + amount + b"}"
    got, headers, payload = await raw_request(http_port, *_json_post("/api/v1/payments", api.key, body))
    assert 400 <= got < 500 and headers["content-type"].startswith("application/json"), (got, payload[:200])
    assert json.loads(payload)["error"]["code"] in ("invalid_json", "validation_failed")


@pytest.mark.gen_test
async def test_a_chunked_body_is_judged_like_any_other(api, http_port):
    """Without Content-Length: the chunks are read within the body limit, then the JSON."""
    head = (
        f"POST /api/v1/users HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {api.key}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked"
    )
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (b'{"name": 1e9', b"99999999}")) + b"0\r\n\r\n"
    got, _, payload = await raw_request(http_port, head, chunks)
    assert (got, json.loads(payload)["error"]["code"]) == (422, "validation_failed"), payload[:300]


@pytest.mark.gen_test
async def test_a_cursor_holding_a_number_past_decimals_range_is_400(api):
    """A forged cursor is parsed by the same JSON reader: a number it cannot convert is
    not a cursor (it was a decimal.InvalidOperation, a 500)."""
    user = await api.new_user()
    cursor = base64.urlsafe_b64encode(b'[1e99999999999999999999, "x"]').decode().rstrip("=")
    code, body, _ = await api.get(f"/api/v1/users/{user['id']}/payments?cursor={cursor}")
    assert (code, body["error"]["code"]) == (400, "invalid_cursor")
