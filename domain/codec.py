"""JSON in and out, exactly: decimals stay decimals, times are RFC 3339 UTC."""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from decimal import Decimal
from typing import Any


class InvalidJSON(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise InvalidJSON(f"{name} is not valid JSON")


def loads(raw: bytes | str) -> Any:
    """Parse JSON with every non-integer number as a Decimal (``100.50`` stays exact).

    Anything that is not JSON raises InvalidJSON, including input nested too deep
    for the parser (which raises RecursionError, not ValueError).
    """
    try:
        return json.loads(raw, parse_float=Decimal, parse_constant=_reject_constant)
    except InvalidJSON:
        raise
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidJSON(str(exc)) from None
    except RecursionError:
        raise InvalidJSON("nested too deeply") from None


_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def is_uuid(value: str) -> bool:
    """A UUID as this service writes them: lower-case hex, hyphenated."""
    return _UUID.fullmatch(value) is not None


def rfc3339(value: dt.datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    value = value.astimezone(dt.UTC)
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dt.datetime):
        return rfc3339(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


def dumps(value: Any) -> bytes:
    return json.dumps(value, default=_default, ensure_ascii=False, separators=(",", ":")).encode()
