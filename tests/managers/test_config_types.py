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


@pytest.mark.parametrize("section", sorted(SCHEMA["properties"]))
def test_the_same_keys_and_types(section: str) -> None:
    keys = SCHEMA["properties"][section]["properties"]
    hints = typing.get_type_hints(sections()[section])
    assert {key: hints.get(key) for key in keys} == {key: expected(schema) for key, schema in keys.items()}
    assert set(hints) == set(keys)
