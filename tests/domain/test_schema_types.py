"""The request bodies' TypedDicts (domain/schemas.py) say what the OpenAPI document's
schemas of the same name say: the same keys, and the same ones required. No servers."""

from __future__ import annotations

import typing

import pytest

from domain import schemas

BODIES = (
    "UserCreate",
    "UserUpdate",
    "PaymentCreate",
    "PaymentStatusUpdate",
    "MetadataPatch",
    "RefundCreate",
    "ApiKeyCreate",
    "WsTokenCreate",
)


def required_keys(typed_dict: type) -> set[str]:
    """Read from the hints: with postponed annotations, Python 3.11 counts a NotRequired key
    as required in ``__required_keys__``."""
    if not getattr(typed_dict, "__total__", True):
        return set()
    hints = typing.get_type_hints(typed_dict, include_extras=True)
    return {key for key, hint in hints.items() if typing.get_origin(hint) is not typing.NotRequired}


@pytest.mark.parametrize("name", BODIES)
def test_the_same_keys_and_the_same_required(name: str) -> None:
    schema = schemas.openapi()["components"]["schemas"][name]
    typed_dict = getattr(schemas, name)
    assert set(typing.get_type_hints(typed_dict)) == set(schema["properties"])
    assert required_keys(typed_dict) == set(schema.get("required", []))


def test_validate_has_one_signature_per_body() -> None:
    overloads = typing.get_overloads(schemas.validate)
    assert sorted(typing.get_type_hints(f)["name"].__args__[0] for f in overloads) == sorted(BODIES)
