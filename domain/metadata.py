"""Metadata: a caller's own keys and values on a payment or a user, with Stripe's limits.

At most ``MAX_KEYS`` keys of at most 40 characters without ``[`` or ``]``, values strings
of at most 500 characters: the shapes are the OpenAPI document's ``Metadata`` schema
(checked by domain/schemas.py, each refusal naming its key); the count after a merge is
checked here. Set at creation, merged by PATCH, where an empty string removes a key (at
creation it sets nothing). Stored as a JSON object in a TEXT column, NULL when empty;
the API and the events always show an object.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

from domain.errors import APIError

MAX_KEYS = 50


def loads(stored: str | None) -> dict[str, str]:
    """The column's value as the API shows it."""
    value: dict[str, str] = json.loads(stored) if stored else {}
    return value


def dumps(metadata: dict[str, str]) -> str | None:
    """What the column stores: sorted keys, so equal metadata is equal text; NULL when empty."""
    return json.dumps(metadata, ensure_ascii=False, sort_keys=True, separators=(",", ":")) if metadata else None


def merged(current: dict[str, str], changes: dict[str, str]) -> dict[str, str]:
    """``current`` with ``changes`` applied (an empty value removes its key); 422 naming the
    first key that does not fit when the result would hold more than ``MAX_KEYS``."""
    result = dict(current)
    for key, value in changes.items():
        if value == "":
            result.pop(key, None)
        else:
            result[key] = value
    if len(result) > MAX_KEYS:
        added = [key for key in changes if key in result and key not in current]
        over = added[len(added) - (len(result) - MAX_KEYS)]  # the first that does not fit
        raise APIError(
            422,
            "validation_failed",
            f"metadata may hold at most {MAX_KEYS} keys",
            details=[{"field": f"metadata.{over[:64]}", "message": f"is one key more than the {MAX_KEYS} allowed"}],
        )
    return result


def patched(row: Mapping[str, Any], changes: dict[str, str], now: dt.datetime) -> dict[str, Any] | None:
    """The locked ``row`` (a user's or a payment's) after ``changes``: its merged metadata as
    stored, the next version, ``now``; None when nothing changes (no write, no event)."""
    current = loads(row["metadata"])
    result = merged(current, changes)
    if result == current:
        return None
    return {**row, "metadata": dumps(result), "version": row["version"] + 1, "updated_at": now}


def created(metadata: Any) -> dict[str, str]:
    """A create's metadata (already validated): nothing, or its keys with a value."""
    return merged({}, metadata or {})
