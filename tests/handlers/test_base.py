"""BaseHandler over real HTTP: JSON errors, request ids, CORS, unknown routes."""

from __future__ import annotations

import json
import re

import pytest


async def fetch(http_client, url, headers=None, **kwargs):
    """A raw request; a body is sent as application/json unless ``headers`` say otherwise."""
    headers = {"Content-Type": "application/json", **(headers or {})}
    return await http_client.fetch(url, raise_error=False, headers=headers, **kwargs)


@pytest.mark.gen_test
async def test_invalid_json_is_400_with_the_envelope(http_client, base_url):
    response = await fetch(http_client, f"{base_url}/_test/echo", method="POST", body=b"{not json")
    assert response.code == 400
    error = json.loads(response.body)["error"]
    assert error["code"] == "invalid_json"
    assert "not valid JSON" in error["message"]
    assert response.headers["Content-Type"].startswith("application/json")


@pytest.mark.gen_test
@pytest.mark.parametrize("body", [b"", b"NaN", b'{"a": Infinity}', b"\xff\xfe"])
async def test_empty_and_non_standard_json_is_400(http_client, base_url, body):
    response = await fetch(http_client, f"{base_url}/_test/echo", method="POST", body=body)
    assert response.code == 400
    assert json.loads(response.body)["error"]["code"] == "invalid_json"


@pytest.mark.gen_test
async def test_decimals_survive_the_round_trip(http_client, base_url):
    response = await fetch(http_client, f"{base_url}/_test/echo", method="POST", body=b'{"amount": 100.50}')
    assert json.loads(response.body) == {"echo": {"amount": "100.50"}}


@pytest.mark.gen_test
async def test_api_error_renders_code_message_details(http_client, base_url):
    response = await fetch(http_client, f"{base_url}/_test/echo", method="POST", body=b'"teapot"')
    assert response.code == 418
    assert json.loads(response.body) == {
        "error": {"code": "teapot", "message": "short and stout", "details": {"spout": True}}
    }


@pytest.mark.gen_test
@pytest.mark.parametrize("extra", [2, 10_000_000])
async def test_body_over_the_limit_is_a_json_413_whatever_its_size(http_client, base_url, config, extra):
    big = b'"' + b"x" * (config["server"]["max_body_bytes"] + extra) + b'"'
    response = await fetch(http_client, f"{base_url}/_test/echo", method="POST", body=big)
    assert response.code == 413
    assert json.loads(response.body)["error"]["code"] == "body_too_large"


@pytest.mark.gen_test
async def test_body_at_the_limit_is_read(http_client, base_url, config):
    body = b'"' + b"x" * (config["server"]["max_body_bytes"] - 2) + b'"'
    response = await fetch(http_client, f"{base_url}/_test/echo", method="POST", body=body)
    assert response.code == 200


@pytest.mark.gen_test
async def test_unknown_route_is_a_json_404(http_client, base_url):
    response = await fetch(http_client, f"{base_url}/nope")
    assert response.code == 404
    assert json.loads(response.body)["error"]["code"] == "not_found"


@pytest.mark.gen_test
async def test_wrong_method_is_a_json_405(http_client, base_url):
    response = await fetch(http_client, f"{base_url}/health", method="DELETE")
    assert response.code == 405
    assert json.loads(response.body)["error"]["code"] == "method_not_allowed"


@pytest.mark.gen_test
async def test_request_id_is_echoed_or_generated(http_client, base_url):
    given = await fetch(http_client, f"{base_url}/_test/managers", headers={"X-Request-ID": "abc-123"})
    assert given.headers["X-Request-ID"] == "abc-123"
    made = await fetch(http_client, f"{base_url}/_test/managers")
    other = await fetch(http_client, f"{base_url}/_test/managers")
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["X-Request-ID"])
    assert made.headers["X-Request-ID"] != other.headers["X-Request-ID"]
    # One that is not a safe id is replaced by a generated one, not echoed or mangled.
    bogus = await fetch(http_client, f"{base_url}/_test/managers", headers={"X-Request-ID": "bad id\t!"})
    assert re.fullmatch(r"[0-9a-f]{32}", bogus.headers["X-Request-ID"])


@pytest.mark.gen_test
async def test_request_id_survives_an_error_response(http_client, base_url):
    response = await fetch(http_client, f"{base_url}/nope", headers={"X-Request-ID": "trace-42"})
    assert response.code == 404
    assert response.headers["X-Request-ID"] == "trace-42"


@pytest.mark.gen_test
async def test_cors_allows_configured_origins_only(http_client, base_url, config):
    allowed = config["cors"]["allowed_origins"][0]
    ok = await fetch(http_client, f"{base_url}/_test/managers", headers={"Origin": allowed})
    assert ok.headers["Access-Control-Allow-Origin"] == allowed
    other = await fetch(http_client, f"{base_url}/_test/managers", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers
    preflight = await fetch(
        http_client,
        f"{base_url}/_test/echo",
        method="OPTIONS",
        headers={"Origin": allowed, "Access-Control-Request-Method": "POST"},
    )
    assert preflight.code == 204
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
