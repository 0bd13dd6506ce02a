"""Exact money: ISO 4217 currencies, their minor-unit exponents, and conversions.

Amounts travel as decimal strings (``"100.50"``), are checked against the
currency's exponent (USD 2, JPY 0, KWD 3) and are stored as integer minor
units. No binary float ever holds an amount.
"""

from __future__ import annotations

import re
from decimal import (
    Clamped,
    Context,
    Decimal,
    DecimalException,
    DivisionByZero,
    FloatOperation,
    Inexact,
    InvalidOperation,
    Overflow,
    Rounded,
    Subnormal,
    Underflow,
)

from domain import codec

# Active ISO 4217 codes by minor-unit exponent (fund and precious-metal codes excluded).
_BY_EXPONENT = {
    0: "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF",
    2: (
        "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BRL BSD BTN BWP BYN BZD "
        "CAD CDF CHF CNY COP CRC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD "
        "GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS KHR KPW KYD KZT LAK LBP LKR LRD LSL MAD "
        "MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD PAB PEN PGK PHP "
        "PKR PLN QAR RON RSD RUB SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS "
        "TMT TOP TRY TTD TWD TZS UAH USD UYU UZS VES WST XCD YER ZAR ZMW ZWG"
    ),
    3: "BHD IQD JOD KWD LYD OMR TND",
    4: "CLF UYW",
}
EXPONENTS: dict[str, int] = {code: exp for exp, codes in _BY_EXPONENT.items() for code in codes.split()}

AMOUNT_PATTERN = r"^[0-9]{1,15}(\.[0-9]{1,4})?$"
_AMOUNT_RE = re.compile(AMOUNT_PATTERN)
MAX_AMOUNT_CHARS = 20  # what AMOUNT_PATTERN can match, checked before the regex runs
MAX_MINOR = 2**63 - 1  # the column is a signed BIGINT

# Every Decimal operation on an amount names this context, never the thread's default:
# precision for any number codec.loads reads (MAX_NUMBER_CHARS digits), a range for any
# amount left once its size is checked, and every condition a trap, so nothing is ever
# rounded, clamped or flushed to zero without an error.
EXACT = Context(
    prec=codec.MAX_NUMBER_CHARS,
    Emax=999,
    Emin=-999,
    traps=[Clamped, DivisionByZero, FloatOperation, Inexact, InvalidOperation, Overflow, Rounded, Subnormal, Underflow],
)


class MoneyError(ValueError):
    """An amount that cannot be taken; ``code`` is the API error code, ``field`` the
    request field at fault."""

    def __init__(self, code: str, message: str, field: str = "amount"):
        super().__init__(message)
        self.code = code
        self.field = field


def parse_amount(value: Decimal | int | str | codec.OutOfBounds, currency: str, maximum: int) -> int:
    """Validate an amount for ``currency`` and return it in minor units, exactly.

    ``value`` is what ``codec.loads`` made of the JSON (an int, a Decimal, an
    OutOfBounds) or a decimal string. Taken iff it is greater than 0, at most
    ``maximum`` (major units), and a whole number of the currency's minor units: never
    rounded. Its size is checked (length, order of magnitude) before any arithmetic.
    """
    exponent = EXPONENTS.get(currency)
    if exponent is None:
        raise MoneyError("unknown_currency", f"{currency!r} is not an ISO 4217 currency code", field="currency")
    if isinstance(value, str):
        if len(value) > MAX_AMOUNT_CHARS or not _AMOUNT_RE.fullmatch(value):
            raise MoneyError("invalid_amount", 'amount must be a plain decimal such as "100.50"')
        amount = EXACT.create_decimal(value)
    elif isinstance(value, codec.OutOfBounds):
        raise MoneyError("invalid_amount", f"amount is {codec.OutOfBounds.RULE}")
    elif isinstance(value, bool) or not isinstance(value, (Decimal, int)):
        raise MoneyError("invalid_amount", "amount must be a number or a decimal string")
    elif isinstance(value, int):
        # Clamped into [0, maximum + 1], which keeps its verdict below and bounds its size.
        amount = Decimal(max(0, min(value, maximum + 1)))
    else:
        amount = value
    # Comparisons are exact and cost nothing whatever the exponent (no context involved).
    if not amount.is_finite() or amount <= 0:
        raise MoneyError("invalid_amount", "amount must be greater than 0")
    if amount > maximum:
        raise MoneyError("amount_too_large", f"amount must be at most {maximum}")
    places = f"{currency} allows at most {exponent} decimal place{'s' if exponent != 1 else ''}"
    if amount.adjusted() < -exponent:  # less than one minor unit (0.001 USD, 1e-9999 end here)
        raise MoneyError("invalid_amount", places)
    try:
        minor = amount.scaleb(exponent, context=EXACT)
        if minor != minor.to_integral_value(context=EXACT):
            raise MoneyError("invalid_amount", places)
        whole = int(minor)
    except DecimalException:  # a Decimal not from codec.loads, with more digits than EXACT holds
        raise MoneyError("invalid_amount", f"amount must have at most {EXACT.prec} digits") from None
    if whole > MAX_MINOR:
        raise MoneyError("amount_too_large", f"amount must be at most {format_amount(MAX_MINOR, currency)}")
    return whole


def format_amount(minor: int, currency: str) -> str:
    """Minor units back to the exact decimal string: 10050 USD -> "100.50", 500 JPY -> "500"."""
    exponent = EXPONENTS[currency]
    whole, part = divmod(abs(minor), 10**exponent)
    sign = "-" if minor < 0 else ""
    return f"{sign}{whole}.{part:0{exponent}d}" if exponent else f"{sign}{whole}"
