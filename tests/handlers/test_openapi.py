"""The OpenAPI document: valid, served, and covering every route the app has."""

from __future__ import annotations

import re

import pytest
from jsonschema import Draft202012Validator

from domain.schemas import openapi, validator
from service.app import make_app


def test_every_component_schema_is_valid_json_schema():
    for schema in openapi()["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)


def test_every_route_is_documented(unit_config):
    documented = {re.sub(r"\{[^}]+\}", "{}", path) for path in openapi()["paths"]}
    app = make_app(unit_config)
    routes = {rule.matcher.regex.pattern.rstrip("$").replace("([^/]+)", "{}") for rule in app.wildcard_router.rules}
    assert routes - documented == set()


@pytest.mark.gen_test
async def test_served_as_json(api):
    code, body, headers = await api.get("/openapi.json")
    assert code == 200 and body["openapi"] == "3.1.0"
    assert body == openapi()


@pytest.mark.gen_test
async def test_a_websocket_token_is_what_the_document_says_a_token_is(api):
    # The document once took any 2048 characters: in UTF-8, more than a 16 KiB request head holds.
    token = await api.ws_token((await api.new_user())["id"])
    assert validator("Jwt").is_valid(token)
    assert not validator("Jwt").is_valid("ࠀ" * 1000)
