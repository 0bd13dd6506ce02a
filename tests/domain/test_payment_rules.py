"""Pure rules of payments: the state machine, cursors, request fingerprints."""

from __future__ import annotations

import datetime as dt

import pytest

from domain import payments
from domain.errors import APIError


def test_state_machine_matches_the_contract():
    t = payments.TRANSITIONS
    assert t["pending"] == {"processing", "completed", "failed", "cancelled"}
    assert t["processing"] == {"completed", "failed"}
    assert t["completed"] == {"refunded"}
    assert t["failed"] == t["cancelled"] == t["refunded"] == set()


def test_cursor_round_trip_keeps_microseconds():
    row = {"created_at": dt.datetime(2026, 11, 25, 1, 2, 3, 456789), "id": "abc"}
    assert payments.decode_cursor(payments.encode_cursor(row)) == (row["created_at"], "abc")


@pytest.mark.parametrize("cursor", ["", "!!!", "bm90IGpzb24", "WzFd", "WyJub3QgYSBkYXRlIiwgIngiXQ"])
def test_foreign_cursors_are_a_400(cursor):
    with pytest.raises(APIError) as caught:
        payments.decode_cursor(cursor)
    assert caught.value.status == 400 and caught.value.code == "invalid_cursor"


def test_fingerprint_is_about_meaning_not_spelling():
    a = payments.request_fingerprint("u", 10050, "USD", None)
    assert a == payments.request_fingerprint("u", 10050, "USD", None)
    assert a != payments.request_fingerprint("u", 10051, "USD", None)
    assert a != payments.request_fingerprint("u", 10050, "USD", "")
