"""Exact money: ISO 4217 currencies, their minor-unit exponents, and conversions.

Amounts travel as decimal strings (``"100.50"``), are checked against the
currency's exponent (USD 2, JPY 0, KWD 3) and are stored as integer minor
units. No binary float ever holds an amount.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

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


class MoneyError(ValueError):
    """An amount that cannot be taken; ``code`` is the API error code, ``field`` the
    request field at fault."""

    def __init__(self, code: str, message: str, field: str = "amount"):
        super().__init__(message)
        self.code = code
        self.field = field


def parse_amount(value: Decimal | int | str, currency: str, maximum: Decimal) -> int:
    """Validate an amount for ``currency`` and return it in minor units."""
    exponent = EXPONENTS.get(currency)
    if exponent is None:
        raise MoneyError("unknown_currency", f"{currency!r} is not an ISO 4217 currency code", field="currency")
    if isinstance(value, str):
        if not _AMOUNT_RE.fullmatch(value):
            raise MoneyError("invalid_amount", 'amount must be a plain decimal such as "100.50"')
        value = Decimal(value)
    elif isinstance(value, bool) or not isinstance(value, (Decimal, int)):
        raise MoneyError("invalid_amount", "amount must be a number or a decimal string")
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise MoneyError("invalid_amount", "amount is not a number") from None
    if not amount.is_finite() or amount <= 0:
        raise MoneyError("invalid_amount", "amount must be greater than 0")
    if amount > maximum:
        raise MoneyError("amount_too_large", f"amount must be at most {maximum}")
    minor = amount.scaleb(exponent)
    if minor != minor.to_integral_value():
        raise MoneyError(
            "invalid_amount", f"{currency} allows at most {exponent} decimal place{'s' if exponent != 1 else ''}"
        )
    return int(minor)


def format_amount(minor: int, currency: str) -> str:
    """Minor units back to the exact decimal string: 10050 USD -> "100.50", 500 JPY -> "500"."""
    exponent = EXPONENTS[currency]
    return str(Decimal(minor).scaleb(-exponent).quantize(Decimal(1).scaleb(-exponent)))
