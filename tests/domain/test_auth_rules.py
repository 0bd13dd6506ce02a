"""API keys and WebSocket tokens (pure logic): the key's shape, who sees what, tokens we
signed and no others, and the verdict cache with a stand-in lookup. Against the real
servers: tests/handlers/test_auth.py and test_ws.py."""

from __future__ import annotations

import asyncio
import time

import jwt
import pytest

from domain import auth, users
from domain.auth import ADMIN, KEY_PATTERN, USER, Authenticator, InvalidToken, Principal

SECRET = "a-token-secret-of-the-unit-tier-0123456789"


def authenticator(ttl_s: float = 2) -> Authenticator:
    return Authenticator({"enabled": True, "key_cache_ttl_s": ttl_s, "token_ttl_s": 300, "token_secret": SECRET})


def test_a_new_key_has_its_role_a_prefix_to_find_it_by_and_32_random_characters():
    keys = {auth.new_key(role) for role in (ADMIN, USER) for _ in range(50)}
    assert len(keys) == 100 and all(KEY_PATTERN.match(key) for key in keys)
    key = auth.new_key(USER)
    assert key.startswith("sk_user_") and auth.key_prefix(key) == key[: len("sk_user_") + 8]


def test_an_admin_sees_everyone_and_a_user_key_only_its_own_user():
    admin, user = Principal("k1", ADMIN, None), Principal("k2", USER, "u1")
    assert admin.can_see("u1") and admin.can_see(None) and admin.is_admin
    assert user.can_see("u1") and not user.can_see("u2") and not user.can_see(None) and not user.is_admin


def test_a_token_names_its_user_and_only_our_own_unexpired_tokens_are_taken():
    verifier = authenticator()
    minted = verifier.mint_token("u1", "k1")
    claims = verifier.verify_token(minted["token"])
    assert (claims.user_id, claims.key_id) == ("u1", "k1")
    assert minted["expires_at"] == auth.expires_at(claims.expires_at)
    assert minted["expires_at"].endswith("Z")
    now = int(time.time())
    claims = {"sub": "u1", "exp": now + 60, "jti": "j"}
    refused = [
        jwt.encode(claims, "not-our-secret-" * 3, algorithm="HS256"),  # forged
        jwt.encode({**claims, "exp": now - 5}, SECRET, algorithm="HS256"),  # expired
        jwt.encode({"sub": "u1", "exp": now + 60}, SECRET, algorithm="HS256"),  # no jti
        jwt.encode({**claims, "sub": 7}, SECRET, algorithm="HS256"),  # not a user id
        jwt.encode(claims, None, algorithm="none"),  # unsigned
        "sk_admin_" + "x" * 32,  # an API key is no token
        "",
    ]
    for token in refused:
        with pytest.raises(InvalidToken):
            verifier.verify_token(token)


@pytest.mark.gen_test
async def test_concurrent_checks_of_one_key_share_one_lookup_and_its_verdict_is_kept_for_the_ttl(monkeypatch):
    verifier = authenticator(ttl_s=60)
    key = auth.new_key(USER)
    lookups: list[str] = []
    answer = asyncio.Event()

    async def lookup(self, key: str, digest: str) -> Principal | None:
        lookups.append(key)
        await answer.wait()
        return Principal("k", USER, "u1")

    monkeypatch.setattr(Authenticator, "_lookup", lookup)
    checks = [asyncio.ensure_future(verifier.authenticate(key)) for _ in range(20)]
    await asyncio.sleep(0)  # every check has started: one looks the key up, the others wait for it
    answer.set()
    assert set(await asyncio.gather(*checks)) == {Principal("k", USER, "u1")}
    assert await verifier.authenticate(key) == Principal("k", USER, "u1")
    assert lookups == [key], "one lookup for 21 checks within the cache period"
    # A malformed key is refused without a lookup; a revoked key's verdict is forgotten at once.
    assert await verifier.authenticate("sk_root_" + "x" * 32) is None and lookups == [key]
    verifier.forget("k")
    await verifier.authenticate(key)
    assert lookups == [key, key]


@pytest.mark.parametrize(
    ("if_match", "version", "matches"),
    [
        ('"2"', 2, True),
        ('W/"2"', 2, True),  # a weak tag compares by its value
        ('"1", "2"', 2, True),
        ("*", 7, True),
        ('"1"', 2, False),
        ("2", 2, False),  # not a quoted tag
        ('"22"', 2, False),
    ],
)
def test_if_match_names_the_current_version_or_any(if_match, version, matches):
    assert users._matches(if_match, version) is matches
