"""JSON and times in and out (pure logic; the same rules over HTTP are in
tests/handlers/test_hostile_input.py and test_base.py)."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from decimal import Decimal

import pytest

from domain import codec
from tests.helpers import NOT_RFC_3339


def test_numbers_with_a_fraction_stay_exact_decimals_and_go_back_out_as_written():
    value = codec.loads(b'{"amount": 100.50, "count": 3, "tiny": 0.1}')
    assert value == {"amount": Decimal("100.50"), "count": 3, "tiny": Decimal("0.1")}
    assert type(value["count"]) is int
    assert json.loads(codec.dumps(value)) == {"amount": "100.50", "count": 3, "tiny": "0.1"}


@pytest.mark.parametrize(
    "raw", [b"", b"{", b"NaN", b'{"a": Infinity}', b"-Infinity", b"\xff\xfe", b"[" * 100_000 + b"]" * 100_000]
)
def test_anything_that_is_not_json_is_invalid_json_never_another_error(raw):
    with pytest.raises(codec.InvalidJSON):
        codec.loads(raw)


@pytest.mark.parametrize(
    "raw", [b'{"a": 1, "a": 2}', b'{"x": {"b": "1", "b": "1"}}', b'[{"amount": "1", "amount": "9"}]']
)
def test_a_repeated_key_is_invalid_json_at_any_depth(raw):
    """Parsers disagree on which of two equal keys wins: refusing both leaves nothing
    for a proxy and this service to read differently."""
    with pytest.raises(codec.InvalidJSON, match="duplicate key"):
        codec.loads(raw)


def test_numbers_past_the_bounds_are_left_unread_wherever_they_are():
    value = codec.loads(b'{"n": [1e10000, -1E-10000, ' + b"7" * 101 + b"]}")
    assert all(isinstance(v, codec.OutOfBounds) for v in value["n"])
    assert repr(value["n"][2]) == f"<a number of 101 characters: {'7' * 24}...>"


def test_dumps_writes_times_ids_and_decimals_as_the_api_shows_them():
    at = dt.datetime(2026, 11, 25, 1, 2, 3, 456789)  # naive: UTC, as MariaDB returns it
    ident = uuid.UUID("3f2b8f0e-8a4c-4d2e-9f57-1c2d3e4f5a6b")
    assert codec.dumps({"at": at, "id": ident, "n": Decimal("1.250"), "s": "é"}) == (
        '{"at":"2026-11-25T01:02:03.456Z","id":"3f2b8f0e-8a4c-4d2e-9f57-1c2d3e4f5a6b","n":"1.250","s":"é"}'.encode()
    )
    with pytest.raises(TypeError):
        codec.dumps({"x": object()})


def test_rfc3339_is_utc_with_milliseconds_whatever_the_zone():
    plus_two = dt.timezone(dt.timedelta(hours=2))
    assert codec.rfc3339(dt.datetime(2026, 7, 1, 2, 0, tzinfo=plus_two)) == "2026-07-01T00:00:00.000Z"
    assert codec.from_rfc3339("2026-07-01T00:00:00.000Z") == dt.datetime(2026, 7, 1, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("text", "utc"),
    [
        ("2026-07-01T12:00:59Z", dt.datetime(2026, 7, 1, 12, 0, 59)),
        ("2026-07-01t12:00:59.1234567z", dt.datetime(2026, 7, 1, 12, 0, 59, 123456)),  # any fraction, lower case
        ("2026-07-01T01:00:00+02:00", dt.datetime(2026, 6, 30, 23, 0)),
        ("2026-07-01T00:00:00-00:00", dt.datetime(2026, 7, 1)),
        ("2026-06-30T23:59:60Z", dt.datetime(2026, 7, 1)),  # a leap second: the next day's first instant
        ("2026-07-01T01:59:60+02:00", dt.datetime(2026, 7, 1)),
        ("0001-01-01T00:00:00Z", dt.datetime(1, 1, 1)),
        ("9999-12-31T23:59:59.999999Z", dt.datetime(9999, 12, 31, 23, 59, 59, 999999)),
    ],
)
def test_every_rfc_3339_form_is_read_in_utc(text, utc):
    assert codec.parse_rfc3339(text) == utc.replace(tzinfo=dt.UTC)


@pytest.mark.parametrize("text", NOT_RFC_3339)
def test_anything_else_is_a_value_error(text):
    with pytest.raises(ValueError):
        codec.parse_rfc3339(text)


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("3f2b8f0e-8a4c-4d2e-9f57-1c2d3e4f5a6b", True),
        ("3F2B8F0E-8A4C-4D2E-9F57-1C2D3E4F5A6B", False),  # ours are lower case
        ("3f2b8f0e8a4c4d2e9f571c2d3e4f5a6b", False),
        ("3f2b8f0e-8a4c-4d2e-9f57-1c2d3e4f5a6b\n", False),
        ("not-a-uuid", False),
    ],
)
def test_is_uuid_takes_only_the_form_the_service_writes(value, ok):
    assert codec.is_uuid(value) is ok


@pytest.mark.parametrize(
    "naive",
    [dt.datetime(1, 1, 1), dt.datetime(2026, 2, 28, 23, 59, 59, 999_999), dt.datetime(9999, 12, 31, 23, 59, 59, 500)],
)
def test_a_naive_time_is_written_as_the_same_time_in_utc(naive):
    """MariaDB's naive times take rfc3339's short way: the same text as the UTC time."""
    assert codec.rfc3339(naive) == codec.rfc3339(naive.replace(tzinfo=dt.UTC))
    assert codec.rfc3339(naive).endswith("Z") and len(codec.rfc3339(naive)) == 24
