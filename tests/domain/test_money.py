"""Exact money: parsing against ISO 4217 exponents, formatting back (pure logic)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from domain import schemas
from domain.money import AMOUNT_PATTERN, EXPONENTS, MoneyError, format_amount, parse_amount

MAX = 1_000_000


@pytest.mark.parametrize(
    ("amount", "currency", "minor", "text"),
    [
        (Decimal("100.50"), "USD", 10050, "100.50"),
        ("100.5", "USD", 10050, "100.50"),
        (Decimal("0.01"), "EUR", 1, "0.01"),
        (500, "JPY", 500, "500"),
        ("1.250", "KWD", 1250, "1.250"),
        (Decimal("0.001"), "BHD", 1, "0.001"),
        (Decimal("999999.99"), "USD", 99999999, "999999.99"),
        (Decimal("1000000"), "USD", 100000000, "1000000.00"),
    ],
)
def test_amounts_round_trip_exactly(amount, currency, minor, text):
    assert parse_amount(amount, currency, MAX) == minor
    assert format_amount(minor, currency) == text


@pytest.mark.parametrize(
    ("amount", "currency", "code"),
    [
        (Decimal("1.001"), "USD", "invalid_amount"),
        (Decimal("1.5"), "JPY", "invalid_amount"),
        (Decimal("0.0001"), "KWD", "invalid_amount"),
        (Decimal("0"), "USD", "invalid_amount"),
        (Decimal("-5"), "USD", "invalid_amount"),
        ("1e3", "USD", "invalid_amount"),
        ("", "USD", "invalid_amount"),
        (True, "USD", "invalid_amount"),
        (1.5, "USD", "invalid_amount"),  # a binary float is refused outright
        (Decimal("1000000.01"), "USD", "amount_too_large"),
        (Decimal("10"), "XXX", "unknown_currency"),
        (Decimal("10"), "usd", "unknown_currency"),
    ],
)
def test_bad_amounts_are_refused_with_a_code(amount, currency, code):
    with pytest.raises(MoneyError) as caught:
        parse_amount(amount, currency, MAX)
    assert caught.value.code == code


def test_exponent_table_has_the_common_and_the_odd_ones():
    assert EXPONENTS["USD"] == 2 and EXPONENTS["JPY"] == 0 and EXPONENTS["KWD"] == 3 and EXPONENTS["CLF"] == 4
    assert all(len(code) == 3 and code.isupper() for code in EXPONENTS)


def test_the_document_states_the_string_amount_rule_the_code_applies():
    """One rule, two readers: the OpenAPI document (which validates requests first) and
    parse_amount must agree on what a decimal-string amount is."""
    amount = schemas.openapi()["components"]["schemas"]["Amount"]
    assert {"type": "string", "pattern": AMOUNT_PATTERN} in amount["oneOf"]
