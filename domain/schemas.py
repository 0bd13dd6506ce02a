"""Request validation with the JSON Schemas of the OpenAPI document: one source
for the docs and the checks.

A body is first checked by fastjsonschema's compiled code of the same schema (its
``$ref``s inlined): 4 us for a payment,
where jsonschema takes 300 (docs/BENCHMARKS.md, history). Only a body it passes is
passed; any other goes through jsonschema, whose errors make the 422's details, so
a body the two read differently is at worst checked twice. fastjsonschema knows
drafts 4 to 7: a schema with a keyword outside ``FAST_KEYWORDS`` (``dependentSchemas``,
a 2019-09 one) has no fast check. tests/domain/test_schemas_fast.py compares the
two verdicts on generated bodies.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, NotRequired, TypedDict, overload

import fastjsonschema
import jsonschema
import yaml
from jsonschema.protocols import Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from domain import codec
from domain.errors import APIError

OPENAPI_PATH = Path(__file__).resolve().parent.parent / "openapi" / "openapi.yaml"
_BASE_URI = "urn:singleton:openapi"


# Request bodies once validate() passed them: the document's schemas of the same name
# (tests/domain/test_schema_types.py keeps the keys in step).
class UserCreate(TypedDict):
    email: str
    name: str
    metadata: NotRequired[dict[str, str]]


class UserUpdate(TypedDict, total=False):  # at least one of the two
    email: str
    name: str


class PaymentCreate(TypedDict):
    user_id: str
    amount: Decimal | int | str  # a JSON number (codec.loads reads it exactly) or a decimal string
    currency: str
    description: NotRequired[str | None]
    metadata: NotRequired[dict[str, str]]


class PaymentStatusUpdate(TypedDict):
    status: str


class MetadataPatch(TypedDict):  # PATCH of a payment or a user
    metadata: dict[str, str]


class RefundCreate(TypedDict, total=False):
    amount: Decimal | int | str  # as PaymentCreate's; absent: what is left of the payment
    reason: str


class ApiKeyCreate(TypedDict):
    role: Literal["admin", "user"]
    user_id: NotRequired[str]  # a user key's, and only a user key's


class WsTokenCreate(TypedDict, total=False):
    user_id: str


@functools.cache
def openapi() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(OPENAPI_PATH.read_text())
    return document


@functools.cache
def _registry() -> Registry[Any]:
    registry: Registry[Any] = Registry().with_resource(
        _BASE_URI, Resource.from_contents(openapi(), default_specification=DRAFT202012)
    )
    return registry


@functools.cache
def ecma_regex(pattern: str) -> re.Pattern[str]:
    """A ``pattern`` read as JSON Schema reads it (ECMA 262), where a final ``$`` is the
    end of the string: Python's ``$`` also matches before a final newline, which would
    let ``"Ada\\n"`` through a pattern that refuses control characters."""
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    return re.compile(pattern)


def _pattern(
    validator: Any, pattern: str, instance: Any, schema: dict[str, Any]
) -> Iterator[jsonschema.ValidationError]:
    if validator.is_type(instance, "string") and not ecma_regex(pattern).search(instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


# What extend() returns is a validator class of its own (not a Draft202012Validator subclass).
_Validator: type[Validator] = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"pattern": _pattern})  # type: ignore[no-untyped-call]  # the stubs leave extend() unannotated


@functools.cache
def validator(name: str) -> Validator:
    if name not in openapi()["components"]["schemas"]:
        raise KeyError(f"no schema {name!r} in {OPENAPI_PATH.name}")
    return _Validator({"$ref": f"{_BASE_URI}#/components/schemas/{name}"}, registry=_registry())


# Keywords fastjsonschema reads as draft 2020-12 does (with $ref inlined first).
FAST_KEYWORDS = frozenset(
    {
        "type", "properties", "required", "additionalProperties", "pattern", "maxLength", "minLength",
        "enum", "const", "oneOf", "anyOf", "allOf", "not", "if", "then", "else", "exclusiveMinimum",
        "exclusiveMaximum", "minimum", "maximum", "maxProperties", "minProperties", "propertyNames",
        "description", "title", "example", "examples", "default",
    }
)  # fmt: skip


def _inlined(node: Any, seen: tuple[str, ...] = ()) -> Any:
    """``node`` with every ``$ref`` to a component replaced by that component (in an
    ``allOf``, beside the other keywords); None if it uses a keyword outside FAST_KEYWORDS
    or refers to itself. Patterns stay as written: fastjsonschema reads an unescaped ``$``
    as the end of the string (``\\Z``), as JSON Schema does (see ``ecma_regex``)."""
    if isinstance(node, list):
        items = [_inlined(item, seen) for item in node]
        return None if any(item is None for item in items) else items
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "$ref":
            name = value.rsplit("/", 1)[-1]
            target = openapi()["components"]["schemas"].get(name) if value.startswith("#/components/schemas/") else None
            inlined = None if target is None or name in seen else _inlined(target, (*seen, name))
            if inlined is None:
                return None
            out.setdefault("allOf", []).append(inlined)
        elif key == "properties":
            props = {name: _inlined(sub, seen) for name, sub in value.items()}
            if any(sub is None for sub in props.values()):
                return None
            out[key] = props
        elif key in ("description", "title", "example", "examples", "default", "enum", "const", "required", "pattern"):
            out[key] = value
        elif key not in FAST_KEYWORDS or (inlined := _inlined(value, seen)) is None:
            return None
        else:
            out[key] = inlined
    return out


@functools.cache
def fast_check(name: str) -> Callable[[Any], Any] | None:
    """fastjsonschema's compiled check of ``components.schemas[name]``, or None (see the module)."""
    schema = _inlined({"$ref": f"#/components/schemas/{name}"})
    if schema is None:
        return None
    try:
        check: Callable[[Any], Any] = fastjsonschema.compile(
            {"$schema": "http://json-schema.org/draft-07/schema#", **schema}
        )
    except (fastjsonschema.JsonSchemaDefinitionException, re.error):  # e.g. a "$" in a [...] set
        return None
    return check


def _field(error: jsonschema.ValidationError) -> str:
    path = _encodable(".".join(str(p) for p in error.absolute_path))
    if "propertyNames" in error.schema_path and isinstance(error.instance, str):
        return f"{path}.{_encodable(error.instance[:64])}"  # the key itself is at fault: name it
    if error.validator == "required":
        missing = error.message.split("'")[1]
        return f"{path}.{missing}" if path else missing
    return path or "<body>"


MAX_MESSAGE = 200


def _message(error: jsonschema.ValidationError) -> str:
    if isinstance(error.instance, codec.OutOfBounds):
        return f"is {codec.OutOfBounds.RULE}"
    if error.validator == "pattern":
        return "has an invalid format or characters that are not allowed"
    if error.validator == "maxLength":
        return f"is longer than {error.validator_value} characters"
    if error.validator == "oneOf":
        return "must be a positive number or a decimal string"
    if error.validator == "type":
        return f"must be of type {error.validator_value}"
    if error.validator == "maxProperties":
        return f"has more than {error.validator_value} keys"
    # Never echo a huge or hostile value back whole.
    return error.message if len(error.message) <= MAX_MESSAGE else error.message[:MAX_MESSAGE] + "..."


_SURROGATE = re.compile("[\ud800-\udfff]")


def _encodable(text: str) -> str:
    """``text`` with each lone surrogate written as ``\\udXXX``: a field name the answer can encode."""
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _lone_surrogates(value: Any, path: str = "") -> list[str]:
    """The fields holding half of a UTF-16 pair (JSON's ``"\\ud800"`` alone), which no
    database column can store. The document's patterns cannot say this: the regex
    engines other tools check them with have no surrogates to name."""
    if isinstance(value, str):
        return [path or "<body>"] if _SURROGATE.search(value) else []
    if isinstance(value, dict):
        found = []
        for key, item in value.items():
            name = _encodable(key)
            field = f"{path}.{name}" if path else name
            found += ([field] if name != key else []) + _lone_surrogates(item, field)
        return found
    if isinstance(value, list):
        return [f for i, item in enumerate(value) for f in _lone_surrogates(item, f"{path}.{i}" if path else str(i))]
    return []


@overload
def validate(name: Literal["UserCreate"], body: Any) -> UserCreate: ...
@overload
def validate(name: Literal["UserUpdate"], body: Any) -> UserUpdate: ...
@overload
def validate(name: Literal["PaymentCreate"], body: Any) -> PaymentCreate: ...
@overload
def validate(name: Literal["PaymentStatusUpdate"], body: Any) -> PaymentStatusUpdate: ...
@overload
def validate(name: Literal["MetadataPatch"], body: Any) -> MetadataPatch: ...
@overload
def validate(name: Literal["RefundCreate"], body: Any) -> RefundCreate: ...
@overload
def validate(name: Literal["ApiKeyCreate"], body: Any) -> ApiKeyCreate: ...
@overload
def validate(name: Literal["WsTokenCreate"], body: Any) -> WsTokenCreate: ...
def validate(name: str, body: Any) -> Any:
    """Check ``body`` against ``components.schemas[name]``; 422 listing every problem."""
    check = fast_check(name)
    try:
        if check is not None and not _lone_surrogates(body):
            check(body)
            return body
    except (fastjsonschema.JsonSchemaException, RecursionError):
        pass  # jsonschema says what is wrong
    try:
        errors = sorted(validator(name).iter_errors(body), key=lambda e: list(e.absolute_path))
        surrogates = _lone_surrogates(body)
    except RecursionError:
        raise APIError(422, "validation_failed", "request body is nested too deeply") from None
    details = [{"field": _field(e), "message": _message(e)} for e in errors]
    details += [{"field": field, "message": "holds a lone surrogate"} for field in surrogates]
    if details:
        raise APIError(422, "validation_failed", "request body failed validation", details=details)
    return body
