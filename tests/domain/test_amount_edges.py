"""Amounts at every edge, as properties (pure logic; the same edges over HTTP are in
tests/handlers/test_payments.py).

A request's amount goes through what ``POST /api/v1/payments`` runs before the
database: ``codec.loads`` (the JSON), ``schemas.validate`` (the document), then
``parse_amount`` (the currency). The contract, for every minor-unit exponent in the
currency table: an amount is taken iff it is written within the documented grammar
(a JSON number of at most ``codec.MAX_NUMBER_CHARS`` characters with an exponent within
``±codec.MAX_EXPONENT``; a string matching ``AMOUNT_PATTERN``), is a whole number of
minor units, and lies in (0, maximum]; then the minor units are its exact value. Every
other amount is a 422 naming the field, never another error. The oracle below reads the
text with integers only, independently of Decimal.

Hypothesis runs derandomized (the same examples on every run, as the contract test's
fixed seed) and without an example database (nothing written to the tree).
"""

from __future__ import annotations

import json
import re
import time
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domain import codec, schemas
from domain.errors import APIError
from domain.money import EXPONENTS, MAX_MINOR, MoneyError, format_amount, parse_amount

USER = "3f2b8f0e-8a4c-4d2e-9f57-1c2d3e4f5a6b"
# One currency for each exponent the table has (0, 2, 3, 4 today; a new one joins by itself).
CURRENCIES = sorted({exponent: code for code, exponent in sorted(EXPONENTS.items())}.values())
MAXIMUMS = [1, 1_000_000, 10**15]  # the smallest, the shipped, and the largest config allows
PROPERTY = settings(
    max_examples=200, derandomize=True, database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

_JSON_NUMBER = re.compile(r"(-?)(0|[1-9][0-9]*)(?:\.([0-9]+))?(?:[eE]([+-]?[0-9]+))?")
_DECIMAL_STRING = re.compile(r"([0-9]{1,15})(?:\.([0-9]{1,4}))?")  # the document's Amount string, restated


def expected(text: str, is_string: bool, exponent: int, maximum: int) -> int | None:
    """The minor units the contract promises for ``text``, or None for a 422."""
    if is_string:
        match = _DECIMAL_STRING.fullmatch(text)
        if match is None:
            return None
        sign, whole, fraction, power = "", match[1], match[2] or "", 0
    else:
        match = _JSON_NUMBER.fullmatch(text)
        assert match is not None, f"the strategy drew no JSON number: {text!r}"
        if len(text) > codec.MAX_NUMBER_CHARS or (match[4] and abs(int(match[4])) > codec.MAX_EXPONENT):
            return None
        sign, whole, fraction, power = match[1], match[2], match[3] or "", int(match[4] or 0)
    digits = int(whole + fraction)
    if digits == 0 or sign:  # 0, 0.000, -0, and anything negative
        return None
    shift = power - len(fraction) + exponent  # the amount is digits * 10**shift minor units
    while digits % 10 == 0:
        digits, shift = digits // 10, shift + 1
    if shift < 0:  # digits ends in a non-zero digit: a fraction of a minor unit is left
        return None
    if shift > 25:  # at least 10**25 minor units, past any maximum
        return None
    minor = digits * 10**shift
    return minor if minor <= min(maximum * 10**exponent, MAX_MINOR) else None


def decided(amount_json: str, currency: str, maximum: int) -> int | None:
    """What the service makes of a body with this amount (its JSON text): the minor
    units it would store, or None for the 422 it answers. Any other outcome fails."""
    raw = f'{{"user_id": "{USER}", "amount": {amount_json}, "currency": "{currency}"}}'
    try:
        body = schemas.validate("PaymentCreate", codec.loads(raw))
        return parse_amount(body["amount"], currency, maximum)
    except APIError as exc:
        assert (exc.status, exc.code) == (422, "validation_failed"), exc
        assert [d["field"] for d in exc.details or []] == ["amount"], exc.details
    except MoneyError as exc:
        assert exc.code in ("invalid_amount", "amount_too_large") and exc.field == "amount", exc
        assert str(exc), "a refusal says why"
    return None


# -- strategies -----------------------------------------------------------------------------
_digits = st.text("0123456789", min_size=1, max_size=40)
_exponent_values = st.one_of(
    st.integers(0, 40),
    st.integers(codec.MAX_EXPONENT - 10, codec.MAX_EXPONENT + 10),  # the bound, from both sides
    st.sampled_from([999_999, 1_000_100, 999_999_999, 10**20]),  # 1e-999999, an underflow, 1E+999999999
)


@st.composite
def json_numbers(draw: st.DrawFn) -> str:
    """Any JSON number: zeros, negatives, long digit strings (across the length bound),
    fractions, exponents of every size with and without signs and leading zeros."""
    sign = draw(st.sampled_from(["", "-"]))
    whole = draw(
        st.one_of(
            st.just("0"),
            st.builds(str.__add__, st.sampled_from("123456789"), st.text("0123456789", max_size=20)),
            st.builds(str.__add__, st.sampled_from("123456789"), st.text("0123456789", min_size=85, max_size=110)),
        )
    )
    fraction = draw(st.one_of(st.just(""), _digits.map(".".__add__)))
    exponent = ""
    if draw(st.booleans()):
        exponent = "".join(
            (
                draw(st.sampled_from("eE")),
                draw(st.sampled_from(["", "+", "-"])),
                "0" * draw(st.integers(0, 3)),
                str(draw(_exponent_values)),
            )
        )
    return sign + whole + fraction + exponent


def _plain(digits: int, power: int) -> str:
    """digits * 10**power as a plain decimal."""
    text = str(digits)
    if power >= 0:
        return text + "0" * power
    text = text.rjust(-power + 1, "0")
    return f"{text[:power]}.{text[power:]}"


@st.composite
def exact_writings(draw: st.DrawFn, exponent: int, maximum: int, as_string: bool = False, plain: bool = False) -> str:
    """An amount of whole minor units in (0, maximum], written in one of the ways a
    client may: plain, with extra trailing zeros, with an exponent (``150e-2``,
    ``1.5E+2``), and (as a string) with leading zeros."""
    minor = draw(st.integers(1, min(maximum * 10**exponent, MAX_MINOR)))
    zeros = draw(st.integers(0, 6))
    digits, power = minor * 10**zeros, -exponent - zeros  # the amount is digits * 10**power
    if as_string:
        return "0" * draw(st.integers(0, 4)) + _plain(digits, power)
    form = "plain" if plain else draw(st.sampled_from(["plain", "e", "E+", "point"]))
    if form == "plain":
        return _plain(digits, power)
    if form == "e":
        return f"{digits}e{power}"
    if form == "E+":
        moved = draw(st.integers(0, 30))
        return f"{digits * 10**moved}E{power - moved:+d}"
    text = str(digits)  # one digit before the point: 1.5E+2
    return f"{text[0]}.{text[1:] or '0'}E{power + len(text) - 1:+d}"


@st.composite
def off_by_a_little(draw: st.DrawFn, exponent: int, maximum: int) -> str:
    """An exact amount with one more non-zero digit far to the right: never a whole
    number of minor units, however many digits it takes (28, Decimal's default
    precision, among them)."""
    exact = draw(exact_writings(exponent, maximum, plain=True))
    point = "" if "." in exact else "."
    return exact + point + "0" * draw(st.integers(0, 40)) + draw(st.sampled_from("123456789"))


@st.composite
def amount_strings(draw: st.DrawFn, exponent: int, maximum: int) -> str:
    return draw(
        st.one_of(
            exact_writings(exponent, maximum, as_string=True),
            json_numbers(),
            off_by_a_little(exponent, maximum),
            st.text("0123456789.eE+- ", max_size=25),
        )
    )


# -- properties -----------------------------------------------------------------------------
EDGES = [
    "1e-999999",
    "1e-1000100",  # past Decimal's default Emin: scaled by the thread's context, it was 0
    "1E+999999999",
    "-0",
    "0.000",
    "0e5",
    "-1",
    "150e-2",
    "1.5E+2",
    "100.50",
    "1.00000000000000000000000000001",  # 30 digits: Decimal's default precision (28) made it 1.00
    "1." + "0" * 38 + "1",  # 40 digits
    "1" + "0" * 39,
    "1" + "0" * 1_000_000,  # 1 MB
    "0." + "0" * 1_000_000 + "1",
]


@pytest.mark.parametrize("currency", CURRENCIES)
@pytest.mark.parametrize("text", EDGES, ids=lambda t: t if len(t) < 40 else f"{t[:12]}..({len(t)} chars)")
def test_the_named_edges_as_json_numbers(currency, text):
    assert decided(text, currency, 1_000_000) == expected(text, False, EXPONENTS[currency], 1_000_000)


@pytest.mark.parametrize("currency", CURRENCIES)
@PROPERTY
@given(data=st.data(), maximum=st.sampled_from(MAXIMUMS))
def test_a_json_number_is_taken_iff_it_is_exact_and_in_range(currency, data, maximum):
    exponent = EXPONENTS[currency]
    text = data.draw(st.one_of(json_numbers(), exact_writings(exponent, maximum), off_by_a_little(exponent, maximum)))
    assert decided(text, currency, maximum) == expected(text, False, exponent, maximum), text[:120]


@pytest.mark.parametrize("currency", CURRENCIES)
@PROPERTY
@given(data=st.data(), maximum=st.sampled_from(MAXIMUMS))
def test_a_string_is_taken_iff_it_is_a_plain_decimal_exact_and_in_range(currency, data, maximum):
    exponent = EXPONENTS[currency]
    text = data.draw(amount_strings(exponent, maximum))
    assert decided(json.dumps(text), currency, maximum) == expected(text, True, exponent, maximum), text


@pytest.mark.parametrize("currency", CURRENCIES)
@PROPERTY
@given(data=st.data())
def test_every_stored_amount_reads_back_to_itself(currency, data):
    """format_amount (what the API shows) and parse_amount (what it takes) are inverses
    over every amount a payment can hold, however large."""
    exponent = EXPONENTS[currency]
    minor = data.draw(st.integers(1, MAX_MINOR))
    text = format_amount(minor, currency)
    assert len(text.replace(".", "")) == max(len(str(minor)), exponent + 1)
    assert decided(text, currency, 10**15) == (minor if minor <= 10**15 * 10**exponent else None)


def test_the_table_has_the_exponents_the_properties_need():
    assert {0, 2, 3} <= {EXPONENTS[c] for c in CURRENCIES} == set(EXPONENTS.values())


# -- cost -----------------------------------------------------------------------------------
def test_a_number_past_the_bounds_is_never_converted(monkeypatch):
    """A 1 MB number or a huge exponent is refused on its text: no Decimal or int is made
    of it (each costs time growing with its length or exponent), and only a short
    prefix of it is kept."""
    converted: list[str] = []

    def recording(literal: str) -> Decimal:
        converted.append(literal)
        return Decimal(literal)

    monkeypatch.setattr(codec, "Decimal", recording)
    bodies = ["1" + "0" * 1_000_000, "1" + "0" * 1_000_000 + ".5", "1e999999999", "1E-999999999", "-1e10000"]
    started = time.process_time()
    for text in bodies:
        value = codec.loads(f'{{"amount": {text}}}')["amount"]
        assert isinstance(value, codec.OutOfBounds) and len(value.prefix) <= 24, text[:40]
        assert decided(text, "USD", 1_000_000) is None
    assert converted == []
    assert time.process_time() - started < 1.0  # the JSON scan itself; about 10 ms


def test_numbers_at_the_bounds_are_read_exactly():
    at_length = "1." + "0" * (codec.MAX_NUMBER_CHARS - 3) + "5"
    assert codec.loads(at_length) == Decimal(at_length)
    assert isinstance(codec.loads(at_length + "0"), codec.OutOfBounds)
    assert codec.loads(f"1e{codec.MAX_EXPONENT}") == Decimal(f"1e{codec.MAX_EXPONENT}")
    assert codec.loads(f"1E-{codec.MAX_EXPONENT}") == Decimal(f"1e-{codec.MAX_EXPONENT}")
    assert isinstance(codec.loads(f"1e-{codec.MAX_EXPONENT + 1}"), codec.OutOfBounds)
    assert codec.loads("9" * codec.MAX_NUMBER_CHARS) == int("9" * codec.MAX_NUMBER_CHARS)
    assert isinstance(codec.loads("9" * (codec.MAX_NUMBER_CHARS + 1)), codec.OutOfBounds)


def test_an_amount_past_bigint_is_too_large_even_under_a_larger_maximum():
    """With a four-decimal currency and the largest maximum config allows, 10**15 CLF is
    10**19 minor units: more than the BIGINT column holds. It is refused, not stored."""
    assert parse_amount(Decimal("922337203685477.5807"), "CLF", 10**15) == MAX_MINOR
    with pytest.raises(MoneyError) as caught:
        parse_amount(Decimal("922337203685477.5808"), "CLF", 10**15)
    assert caught.value.code == "amount_too_large"
