"""Pure rules of payments: the state machine, cursors, request fingerprints."""

from __future__ import annotations

import base64
import datetime as dt
import json

import pytest

from domain import payments
from domain.errors import APIError


def test_state_machine_matches_the_contract():
    t = payments.TRANSITIONS
    assert t["pending"] == {"processing", "completed", "failed", "cancelled"}
    assert t["processing"] == {"completed", "failed"}
    assert t["completed"] == {"refunded"}
    assert t["failed"] == t["cancelled"] == t["refunded"] == set()


PAYMENT_ID = "3f2b8f0e-8a4c-4d2e-9f57-1c2d3e4f5a6b"


def test_cursor_round_trip_keeps_microseconds():
    row = {"created_at": dt.datetime(2026, 11, 25, 1, 2, 3, 456789), "id": PAYMENT_ID}
    assert payments.decode_cursor(payments.encode_cursor(row)) == (row["created_at"], PAYMENT_ID)


def cursor_of(value) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "!!!",
        "bm90IGpzb24",
        "WzFd",
        "WyJub3QgYSBkYXRlIiwgIngiXQ",
        cursor_of(["2026-11-25T01:02:03", "not-a-uuid"]),
        cursor_of(["2026-11-25T01:02:03+00:00", PAYMENT_ID]),  # ours are naive UTC
        cursor_of(["2026-11-25T01:02:03", "\ud800"]),  # a lone surrogate the database could not encode
        base64.urlsafe_b64encode(b"[" * 10_000).decode(),  # deeper than the JSON parser goes
    ],
)
def test_foreign_cursors_are_a_400(cursor):
    with pytest.raises(APIError) as caught:
        payments.decode_cursor(cursor)
    assert caught.value.status == 400 and caught.value.code == "invalid_cursor"


def test_fingerprint_is_about_meaning_not_spelling():
    a = payments.request_fingerprint("u", 10050, "USD", None)
    assert a == payments.request_fingerprint("u", 10050, "USD", None)
    assert a != payments.request_fingerprint("u", 10051, "USD", None)
    assert a != payments.request_fingerprint("u", 10050, "USD", "")
