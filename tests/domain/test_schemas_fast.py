"""The fast check (fastjsonschema's compiled code) against jsonschema, on the document's
request schemas (pure logic). What matters: a body the fast check passes is one
jsonschema passes, since only then is jsonschema skipped; a body it refuses is checked
by jsonschema anyway. And the fast check is in use for the hot bodies.

Hypothesis runs derandomized and without an example database, as in test_amount_edges.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domain import codec, schemas
from domain.errors import APIError

PROPERTY = settings(
    max_examples=200, derandomize=True, database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
USER = "3f2b8f0e-8a4c-4d2e-9f57-1c2d3e4f5a6b"
HOT = ("PaymentCreate", "PaymentStatusUpdate", "RefundCreate", "MetadataPatch", "WsTokenCreate")
FAST = [name for name in schemas.openapi()["components"]["schemas"] if schemas.fast_check(name) is not None]

# Strings near the patterns' edges: control, zero-width and bidi characters, a final
# newline (Python's "$" matches before it, JSON Schema's does not), UUID-like and
# amount-like text, and lone surrogates.
_tricky = st.sampled_from(
    [USER, USER + "\n", USER.upper(), "USD", "usd", "US", "12.50", "12.505", "0", "1e3", "", " ", "a\n",
     "a\u200b", "\u202e", "\ud800", "x" * 40, "x" * 41, "x" * 500, "x" * 501, "completed", "refunded",
     "pending", "requested_by_customer", "a[b]", "$", "\x7f", "\u2028"]
)  # fmt: skip
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.decimals(allow_nan=False, allow_infinity=False),
    st.builds(Decimal, st.sampled_from(["0", "-0.0", "1e400", "0.01", "1E+2"])),
    st.builds(codec.OutOfBounds, st.just("9" * 120)),
    _tricky,
    st.text(max_size=12),
)
_keys_or_text = st.one_of(_tricky, st.text(max_size=5))
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys_or_text, inner, max_size=3),
    max_leaves=8,
)


def _keys(name: str) -> list[str]:
    return [*schemas.openapi()["components"]["schemas"][name].get("properties", {}), "extra"]


@st.composite
def bodies(draw: Any, name: str) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(_values)  # not even an object, now and then
    keys = draw(st.lists(st.sampled_from(_keys(name)), unique=True))
    return {key: draw(_values) for key in keys}


def jsonschema_passes(name: str, body: Any) -> bool:
    return not list(schemas.validator(name).iter_errors(body))


@pytest.mark.parametrize("name", FAST)
@PROPERTY
@given(data=st.data())
def test_what_the_fast_check_passes_jsonschema_passes(name, data):
    body = data.draw(bodies(name))
    try:
        schemas.fast_check(name)(body)  # type: ignore[misc]
    except Exception:
        return  # refused: validate() asks jsonschema
    assert jsonschema_passes(name, body), body


def test_the_hot_bodies_have_a_fast_check_and_pass_it():
    valid = {
        "PaymentCreate": {"user_id": USER, "amount": "12.50", "currency": "USD", "description": "bench"},
        "PaymentStatusUpdate": {"status": "completed"},
        "RefundCreate": {"amount": Decimal("0.01"), "reason": "requested_by_customer"},
        "MetadataPatch": {"metadata": {"order": "A-1"}},
        "WsTokenCreate": {"user_id": USER},
    }
    assert set(valid) == set(HOT)
    for name, body in valid.items():
        check = schemas.fast_check(name)
        assert check is not None, name
        check(body)
        assert schemas.validate(name, body) is body


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"user_id": USER + "\n", "amount": "1", "currency": "USD"}, "user_id"),
        ({"user_id": USER, "amount": "1", "currency": "USD", "description": "a\n"}, "description"),
        ({"user_id": USER, "amount": True, "currency": "USD"}, "amount"),
        ({"user_id": USER, "amount": "1", "currency": "USD", "note": "x"}, "<body>"),
        ({"user_id": USER, "amount": "1", "currency": "USD", "description": "\ud800"}, "description"),
    ],
)
def test_a_body_the_fast_check_refuses_gets_jsonschemas_details(body, field):
    with pytest.raises(APIError) as refused:
        schemas.validate("PaymentCreate", body)
    assert refused.value.status == 422
    assert field in [d["field"] for d in refused.value.details]
