"""API keys and WebSocket tokens (pure logic): the key's shape, who sees what, tokens we
signed and no others, and the verdict cache with a stand-in lookup. Against the real
servers: tests/handlers/test_auth.py and test_ws.py."""

from __future__ import annotations

import asyncio
import time
import zlib

import jwt
import pytest

from domain import auth, users
from domain.auth import ADMIN, KEY_PATTERN, LEGACY_KEY_PATTERN, USER, Authenticator, InvalidToken, Principal

SECRET = "a-token-secret-of-the-unit-tier-0123456789"


def authenticator(ttl_s: float = 2) -> Authenticator:
    return Authenticator({"key_cache_ttl_s": ttl_s, "token_ttl_s": 300, "token_secret": SECRET})


def test_a_new_key_has_its_role_a_prefix_to_find_it_by_32_random_characters_and_their_checksum():
    keys = {auth.new_key(role) for role in (ADMIN, USER) for _ in range(50)}
    assert len(keys) == 100 and all(KEY_PATTERN.match(key) and auth.well_formed(key) for key in keys)
    key = auth.new_key(USER)
    assert key.startswith("sgl_user_") and len(key) == len("sgl_user_") + 32 + 6
    assert auth.key_prefix(key) == key[: len("sgl_user_") + 8]
    assert auth.key_prefix(auth.new_key(ADMIN)).startswith("sgl_admin_")
    assert len(auth.key_prefix(auth.new_key(ADMIN))) <= 32, "api_keys.prefix is a VARCHAR(32)"
    # The checksum is CRC32 of the random part in 6 base-62 digits (0-9, A-Z, a-z): GitHub's scheme.
    random_part = key[len("sgl_user_") : -6]
    assert key[-6:] == auth.checksum(random_part)
    assert auth.checksum("0" * 32) == "0" * (6 - len(b62 := _base62(zlib.crc32(b"0" * 32)))) + b62


def _base62(value: int) -> str:
    digits = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    out = ""
    while value:
        value, digit = divmod(value, 62)
        out = digits[digit] + out
    return out


def test_a_key_whose_checksum_does_not_verify_is_not_well_formed_and_the_first_format_still_is():
    key = auth.new_key(ADMIN)
    body, check = key[:-6], key[-6:]
    wrong = [
        body + check[:-1] + ("A" if check[-1] != "A" else "B"),  # one checksum digit off
        body[:-1] + ("x" if body[-1] != "x" else "y") + check,  # one random character off
        key.replace("sgl_admin_", "sgl_root_"),  # no such role
        key.replace("sgl_", "sk_"),  # the first format has no checksum: 38 characters are too many
        key[:-1],
        "sgl_admin_" + "x" * 38,
    ]
    assert not any(auth.well_formed(k) for k in wrong)
    legacy = "sk_user_" + "A" * 32
    assert LEGACY_KEY_PATTERN.match(legacy) and auth.well_formed(legacy)
    assert auth.key_prefix(legacy) == "sk_user_AAAAAAAA"


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
    assert await verifier.authenticate(key[:-1] + ("0" if key[-1] != "0" else "1")) is None and lookups == [key]
    verifier.forget("k")
    await verifier.authenticate(key)
    assert lookups == [key, key]


@pytest.mark.gen_test
async def test_a_valid_key_in_its_verdicts_last_tenth_is_looked_up_again_with_no_request_waiting(monkeypatch):
    """Refresh ahead: the verdict is used until it expires, never later, while one background
    lookup replaces it; a verdict with more than a tenth of its TTL left starts none."""
    verifier = authenticator(ttl_s=10)
    key = auth.new_key(USER)
    lookups: list[str] = []
    gate = asyncio.Event()
    gate.set()

    async def lookup(self, key: str, digest: str) -> Principal | None:
        lookups.append(key)
        await gate.wait()
        return Principal("k", USER, "u1")

    monkeypatch.setattr(Authenticator, "_lookup", lookup)
    assert await verifier.authenticate(key) == Principal("k", USER, "u1") and len(lookups) == 1
    digest = auth._hash(key)
    verifier._verdicts[digest] = (Principal("k", USER, "u1"), time.monotonic() + 2)  # 2 s of 10 left
    assert await verifier.authenticate(key) == Principal("k", USER, "u1")
    await asyncio.sleep(0)
    assert len(lookups) == 1, "more than a tenth of the TTL left: no lookup"
    gate.clear()
    verifier._verdicts[digest] = (Principal("k", USER, "u1"), time.monotonic() + 0.5)  # in the last tenth
    checks = await asyncio.gather(*(verifier.authenticate(key) for _ in range(5)))
    assert checks == [Principal("k", USER, "u1")] * 5, "answered from the verdict, not after the lookup"
    await asyncio.sleep(0)
    assert len(lookups) == 2, "one background lookup for five checks"
    gate.set()
    await asyncio.wait_for(asyncio.gather(*verifier._refreshing.values()), 5)
    assert verifier._verdicts[digest][1] > time.monotonic() + 9, "the new verdict runs a whole TTL"
    # An expired verdict is never used: the check waits for its own lookup.
    gate.clear()
    verifier._verdicts[digest] = (Principal("k", USER, "u1"), time.monotonic() - 0.01)
    waiting = asyncio.ensure_future(verifier.authenticate(key))
    await asyncio.sleep(0.05)
    assert not waiting.done() and len(lookups) == 3
    gate.set()
    assert await asyncio.wait_for(waiting, 5) == Principal("k", USER, "u1")


@pytest.mark.gen_test
async def test_a_key_revoked_while_its_verdict_is_refreshed_is_refused_from_then_on(monkeypatch):
    verifier = authenticator(ttl_s=10)
    key = auth.new_key(USER)
    gate = asyncio.Event()

    async def lookup(self, key: str, digest: str) -> Principal | None:
        await gate.wait()
        return Principal("k", USER, "u1")  # read before the revocation committed

    monkeypatch.setattr(Authenticator, "_lookup", lookup)
    verifier._verdicts[auth._hash(key)] = (Principal("k", USER, "u1"), time.monotonic() + 0.5)
    assert await verifier.authenticate(key) == Principal("k", USER, "u1")  # starts the refresh
    await asyncio.sleep(0)  # the refresh's lookup is in flight when the revocation lands
    verifier.forget("k")
    gate.set()
    await asyncio.wait_for(asyncio.gather(*verifier._refreshing.values()), 5)
    assert auth._hash(key) not in verifier._verdicts, "the refresh's stale 'valid' was not kept"


@pytest.mark.gen_test
async def test_a_revocation_during_a_lookup_is_not_undone_by_its_verdict(monkeypatch):
    """forget() lands while the key's lookup is in flight (its row was read before the
    revocation committed): that lookup's "valid" is neither returned nor kept."""
    verifier = authenticator(ttl_s=60)
    key, other = auth.new_key(USER), auth.new_key(USER)
    principals = {key: Principal("k", USER, "u1"), other: Principal("k2", USER, "u2")}
    lookups: list[str] = []
    gate = asyncio.Event()

    async def lookup(self, key: str, digest: str) -> Principal | None:
        lookups.append(key)
        await gate.wait()
        return principals[key]

    monkeypatch.setattr(Authenticator, "_lookup", lookup)
    checks = [asyncio.ensure_future(verifier.authenticate(k)) for k in (key, key, other)]
    await asyncio.sleep(0)
    verifier.forget("k")  # revoked meanwhile; "k2" was not
    gate.set()
    assert await asyncio.gather(*checks) == [None, None, principals[other]]
    # Not kept as valid: the next check looks the key up again (and here finds it valid:
    # the stand-in lookup does not know of the revocation), and the other key's verdict was kept.
    assert await verifier.authenticate(key) == principals[key]
    assert await verifier.authenticate(other) == principals[other]
    assert lookups == [key, other, key]
    assert verifier._forgotten == {}, "nothing remembered once no lookup is in flight"


@pytest.mark.gen_test
async def test_before_a_lookup_the_callers_limit_runs_once_and_a_key_found_valid_before_skips_it(monkeypatch):
    verifier = authenticator(ttl_s=0)  # every check looks up again
    key, unknown = auth.new_key(USER), auth.new_key(USER)
    limited: list[str] = []

    async def lookup(self, key: str, digest: str) -> Principal | None:
        return Principal("k", USER, "u1") if key != unknown else None

    monkeypatch.setattr(Authenticator, "_lookup", lookup)
    for k in (key, key, key, unknown, unknown, "sgl_user_" + "x" * 38):

        async def before_lookup(k: str = k) -> None:
            limited.append(k)

        await verifier.authenticate(k, before_lookup)
    assert limited == [key, unknown, unknown], "a known-valid key is looked up again without a token"

    async def refuse() -> None:
        raise RuntimeError("429")

    with pytest.raises(RuntimeError):
        await verifier.authenticate(auth.new_key(ADMIN), refuse)
    assert verifier._in_flight == {}


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
