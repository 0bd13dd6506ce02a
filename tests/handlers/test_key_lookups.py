"""What a key costs MariaDB, counted on the real server (``Com_select``): a key this
instance has no verdict for is looked up only after a token of its address's bucket; a
key whose checksum fails, and the probes, never reach MariaDB; a revocation that lands
during a lookup is not undone by it; keys of the first format work until revoked."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import string
import uuid

import pymysql
import pytest
import tornado.httpserver
import tornado.testing

from domain import auth, codec
from domain.auth import Authenticator
from domain.ratelimit import Rate, RateLimiter, address_bucket
from managers.mysql import MySQLManager
from service.app import make_ops_app
from tests.helpers import Selects, wait_until

CALLS = 300


def forget_the_address_share() -> None:
    """Drop the tokens of 127.0.0.1's bucket this instance holds, or the refusal it remembers
    (for up to a second): a test's tight bucket must not reach the next test's first lookup."""
    RateLimiter.instance()._shares.pop(address_bucket("127.0.0.1"), None)


@pytest.fixture(autouse=True)
def fresh_address_share(services):
    forget_the_address_share()
    yield
    forget_the_address_share()


@pytest.fixture
def lookups(monkeypatch) -> list[str]:
    """Every key this instance looks up in MariaDB, in order."""
    seen: list[str] = []
    original = Authenticator._lookup

    async def counted(self, key, digest):
        seen.append(key)
        return await original(self, key, digest)

    monkeypatch.setattr(Authenticator, "_lookup", counted)
    return seen


def tight_address_bucket(monkeypatch, per_s: float = 1, burst: int = 10) -> Rate:
    """127.0.0.1's bucket at ``burst``, with no tokens of it held here from earlier tests."""
    rate = Rate(per_s=per_s, burst=burst)
    monkeypatch.setattr(RateLimiter.instance(), "anonymous", rate)
    forget_the_address_share()
    return rate


@pytest.mark.gen_test(timeout=60)
async def test_forged_keys_from_one_address_cost_mariadb_at_most_its_bucket(api, config, lookups, monkeypatch):
    """300 keys of the right shape, checksum included, never issued: each one is new to the
    verifier, so each would be a SELECT; only those the address's bucket pays for are."""
    rate = tight_address_bucket(monkeypatch)
    forged = [auth.new_key(auth.ADMIN) for _ in range(CALLS)]
    async with Selects(config["mysql"]) as selects:
        started = asyncio.get_running_loop().time()
        codes = [(await api.with_key(key).get("/api/v1/api-keys"))[0] for key in forged]
        took = asyncio.get_running_loop().time() - started
        by_the_calls = selects.by_the_calls()
    allowed = rate.burst + rate.per_s * took + 1
    assert set(codes) == {401, 429}
    assert codes.count(401) <= allowed and codes.count(429) >= CALLS - allowed, (codes.count(401), took)
    assert len(lookups) == codes.count(401), "a 401 had its lookup; a 429 had none"
    assert by_the_calls <= allowed, f"{by_the_calls} SELECTs for {CALLS} forged keys in {took:.1f} s"


@pytest.mark.gen_test(timeout=60)
async def test_a_key_whose_checksum_fails_is_refused_with_no_lookup(api, config, lookups):
    keys = []
    for _ in range(CALLS):
        key = auth.new_key(auth.ADMIN)
        keys.append(key[:-1] + ("0" if key[-1] != "0" else "1"))
    async with Selects(config["mysql"]) as selects:
        codes = [(await api.with_key(key).get("/api/v1/api-keys"))[0] for key in keys]
        by_the_calls = selects.by_the_calls()
    assert codes == [401] * CALLS
    assert lookups == [] and by_the_calls == 0


@pytest.mark.gen_test(timeout=60)
async def test_a_key_of_the_first_format_works_until_it_is_revoked(api):
    """A key made before checksums (``sk_admin_`` and 32 characters), inserted the way
    create_key inserted it then."""
    key = "sk_admin_" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(32))
    key_id = str(uuid.uuid4())
    async with MySQLManager.instance().home.cursor() as cur:
        await cur.execute(
            "INSERT INTO api_keys (id, prefix, hash, role, user_id, created_at) VALUES (%s, %s, %s, %s, %s, %s)",
            (key_id, key[:17], hashlib.sha256(key.encode()).hexdigest(), "admin", None, codec.utc_now()),
        )
    legacy = api.with_key(key)
    assert (await legacy.get("/api/v1/api-keys"))[0] == 200
    assert (await api.delete(f"/api/v1/api-keys/{key_id}"))[0] == 200
    code, error, _ = await legacy.get("/api/v1/api-keys")
    assert code == 401 and error["error"]["code"] == "unauthorized"


@pytest.fixture
def ops_url(services):
    sock, port = tornado.testing.bind_unused_port()
    server = tornado.httpserver.HTTPServer(make_ops_app())
    server.add_sockets([sock])
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.mark.gen_test(timeout=120)
async def test_probes_the_document_and_metrics_never_cost_a_select(
    api, config, lookups, ops_url, http_client, monkeypatch
):
    """Hammered with no key, with junk, and with a new forged key each time."""
    urls = [api.base_url + path for path in ("/health/live", "/health/ready", "/openapi.json")]
    urls += [ops_url + path for path in ("/metrics", "/health/live", "/health/ready", "/health")]
    async with Selects(config["mysql"]) as selects:
        for url in urls:
            for n in range(40):
                bearer = (None, "junk", auth.new_key(auth.ADMIN))[n % 3]
                headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
                response = await http_client.fetch(url, headers=headers, raise_error=False)
                assert response.code == 200, (url, bearer)
        by_the_calls = selects.by_the_calls()
    assert lookups == [] and by_the_calls == 0

    # /health on the API port reads a key (an admin's sees the whole report): at most once
    # per cache period for a known key, and for new ones no faster than the address's bucket.
    async with Selects(config["mysql"]) as selects:
        admin = [(await api.get("/health"))[0] for _ in range(50)]
        by_the_admin = selects.by_the_calls()
    assert admin == [200] * 50 and len(lookups) <= 1 and by_the_admin <= 1
    rate = tight_address_bucket(monkeypatch, burst=5)
    async with Selects(config["mysql"]) as selects:
        started = asyncio.get_running_loop().time()
        forged = [(await api.with_key(auth.new_key(auth.ADMIN)).get("/health"))[0] for _ in range(100)]
        took = asyncio.get_running_loop().time() - started
        by_the_forged = selects.by_the_calls()
    allowed = rate.burst + rate.per_s * took + 1
    assert set(forged) == {200, 429} and forged.count(200) <= allowed
    assert by_the_forged <= allowed and len(lookups) - 1 <= allowed, (by_the_forged, len(lookups), took)


@pytest.mark.gen_test(timeout=60)
async def test_a_revocation_that_lands_during_a_lookup_is_not_undone(api, config, world_key):
    """The lookup reads the row (not revoked yet: the revocation is not committed), then
    waits for the row's lock to write last_used_at; meanwhile the revocation forgets the
    key on this instance, then commits. The lookup's "valid" must not be served or kept."""
    user_id, key, key_id = world_key
    me = api.with_key(key)
    cfg = config["mysql"]
    revoker = pymysql.connect(
        host=cfg["host"], port=cfg["port"], user=cfg["user"], password=cfg["password"], database=cfg["database"]
    )
    watcher = pymysql.connect(
        host=cfg["host"], port=cfg["port"], user=cfg["user"], password=cfg["password"], database=cfg["database"]
    )
    try:
        with revoker.cursor() as cur:
            cur.execute("BEGIN")
            cur.execute("UPDATE api_keys SET revoked_at = UTC_TIMESTAMP(6) WHERE id = %s", (key_id,))
        request = asyncio.ensure_future(me.get(f"/api/v1/users/{user_id}"))

        def lookup_waits_for_the_lock() -> bool:
            assert not request.done(), request.result()
            with watcher.cursor() as cur:
                # The suite's user sees its own threads without the PROCESS privilege.
                cur.execute(
                    "SELECT COUNT(*) FROM information_schema.PROCESSLIST"
                    " WHERE INFO LIKE 'UPDATE api_keys SET last_used_at%%' AND TIME_MS > 0"
                )
                return cur.fetchone()[0] > 0

        await wait_until(lookup_waits_for_the_lock, timeout=10, interval=0.02, what="the lookup to wait for the row")
        Authenticator.instance().forget(key_id)  # what revoke_key does once its UPDATE is done
        revoker.commit()
        code, error, _ = await request
        assert code == 401 and error["error"]["code"] == "unauthorized", "the overtaken lookup was served"
        assert (await me.get(f"/api/v1/users/{user_id}"))[0] == 401, "the overtaken lookup's verdict was kept"
    finally:
        revoker.close()
        watcher.close()


@pytest.fixture
def world_key(api, io_loop) -> tuple[str, str, str]:
    """A user, and a new key of that user's that has never been used: (user id, key, key id)."""

    async def build():
        user = await api.new_user()
        created = await auth.create_key(auth.USER, user["id"])
        return user["id"], created["key"], created["id"]

    return io_loop.run_sync(build)
