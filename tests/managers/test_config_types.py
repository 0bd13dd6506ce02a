"""The configuration's TypedDicts say what its JSON Schema says: the same sections, the same
keys, and a Python type for each that matches the schema's. No servers needed."""

from __future__ import annotations

import types
import typing
from typing import Any

import pytest

from managers.config import SCHEMA, Config

# A schema type and the annotation that reads it (a JSON number may be an int: float takes both).
PYTHON_TYPES = {"string": str, "integer": int, "number": float, "boolean": bool}


def sections() -> dict[str, Any]:
    return typing.get_type_hints(Config)


def expected(schema: dict[str, Any]) -> object:
    if "enum" in schema:
        return typing.Literal[tuple(schema["enum"])]
    if schema["type"] == "array":
        return types.GenericAlias(list, (PYTHON_TYPES[schema["items"]["type"]],))  # list[str]
    return PYTHON_TYPES[schema["type"]]


def test_the_same_sections() -> None:
    assert set(sections()) == set(SCHEMA["properties"])


def assert_matches(schema: dict[str, Any], typed: Any) -> None:
    """The same keys, the same types, and the same keys required (the rest NotRequired)."""
    keys = schema["properties"]
    hints = typing.get_type_hints(typed)
    assert set(hints) == set(keys)
    assert typed.__required_keys__ == set(schema.get("required", []))
    for key, sub in keys.items():
        hint = hints[key]
        if sub.get("type") == "object" and "properties" in sub:  # a mapping of its own (tls): a TypedDict
            assert_matches(sub, hint)
        elif sub.get("type") == "object":  # a map of names to objects: dict[str, <TypedDict>]
            assert typing.get_origin(hint) is dict and typing.get_args(hint)[0] is str, key
            assert_matches(sub["additionalProperties"], typing.get_args(hint)[1])
        else:
            assert hint == expected(sub), key


@pytest.mark.parametrize("section", sorted(SCHEMA["properties"]))
def test_the_same_keys_and_types(section: str) -> None:
    assert_matches(SCHEMA["properties"][section], sections()[section])


def test_the_optional_sections_are_not_required() -> None:
    assert Config.__required_keys__ == set(SCHEMA["required"])
