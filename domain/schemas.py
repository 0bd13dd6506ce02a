"""Request validation with the JSON Schemas of the OpenAPI document: one source
for the docs and the checks."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from domain.errors import APIError

OPENAPI_PATH = Path(__file__).resolve().parent.parent / "openapi" / "openapi.yaml"
_BASE_URI = "urn:singleton:openapi"


@functools.cache
def openapi() -> dict:
    return yaml.safe_load(OPENAPI_PATH.read_text())


@functools.cache
def _registry() -> Registry:
    return Registry().with_resource(_BASE_URI, Resource.from_contents(openapi(), default_specification=DRAFT202012))


@functools.cache
def validator(name: str) -> jsonschema.Draft202012Validator:
    if name not in openapi()["components"]["schemas"]:
        raise KeyError(f"no schema {name!r} in {OPENAPI_PATH.name}")
    return jsonschema.Draft202012Validator({"$ref": f"{_BASE_URI}#/components/schemas/{name}"}, registry=_registry())


def _field(error: jsonschema.ValidationError) -> str:
    path = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "required":
        missing = error.message.split("'")[1]
        return f"{path}.{missing}" if path else missing
    return path or "<body>"


MAX_MESSAGE = 200


def _message(error: jsonschema.ValidationError) -> str:
    if error.validator == "pattern":
        return "has an invalid format or characters that are not allowed"
    if error.validator == "maxLength":
        return f"is longer than {error.validator_value} characters"
    if error.validator == "oneOf":
        return "must be a positive number or a decimal string"
    if error.validator == "type":
        return f"must be of type {error.validator_value}"
    # Never echo a huge or hostile value back whole.
    return error.message if len(error.message) <= MAX_MESSAGE else error.message[:MAX_MESSAGE] + "..."


def validate(name: str, body: Any) -> dict:
    """Check ``body`` against ``components.schemas[name]``; 422 listing every problem."""
    try:
        errors = sorted(validator(name).iter_errors(body), key=lambda e: list(e.absolute_path))
    except RecursionError:
        raise APIError(422, "validation_failed", "request body is nested too deeply") from None
    if errors:
        details = [{"field": _field(e), "message": _message(e)} for e in errors]
        raise APIError(422, "validation_failed", "request body failed validation", details=details)
    return body
