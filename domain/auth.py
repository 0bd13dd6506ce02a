"""Who is calling: API keys, their roles, and the signed tokens that open a WebSocket.

A key is ``sgl_<role>_``, 32 random base-62 characters (190 bits) and a checksum:
the CRC32 of those 32 characters in 6 base-62 digits, as GitHub's tokens carry one.
The prefix is this service's own (secret scanners attribute ``sk_`` to Stripe), and
the checksum lets a mistyped or invented key be refused with no lookup at all.
Keys of the first format (``sk_<role>_`` and 32 characters, no checksum) still
work until they are revoked. A key is shown once, at creation; MariaDB keeps its
SHA-256 and its prefix (the role and the first 8 random characters), which finds
the row. The hash is then compared in constant time.

Checking a key is not a MariaDB round trip per request: each verdict (a key's
principal, or "no such key") is kept in process for ``auth.key_cache_ttl_s``.
That is the revocation delay: a revoked key keeps working on another instance
for at most that long (on the instance that revoked it, not at all). A lookup
that a revocation overtook (``forget`` ran while it was in flight) is not
trusted: every ``forget`` starts a new epoch, and a lookup started in an older
epoch whose key was forgotten since answers "no such key" and is not kept.
Before looking up a key it has no verdict for, the verifier lets the caller's
``before_lookup`` run: the rate limiter's per-address bucket (handlers/base.py),
so guessing costs MariaDB at most that bucket's rate.

WebSocket tokens are HS256 JWTs (``sub`` = user id, ``exp``, ``jti``, and ``kid``:
the id of the key that minted it) signed with ``auth.token_secret``: browsers cannot
set headers on a WebSocket, so the socket carries a short-lived token instead of the
key. Revoking that key closes the sockets its tokens opened (domain/revocations.py).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import logging
import os
import re
import secrets
import string
import time
import uuid
import zlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NamedTuple

import jwt

from domain import audit, codec, outbox, revocations, users
from domain.audit import OPERATOR, Actor
from domain.errors import APIError, not_found, user_not_found
from managers import metrics
from managers.background import Backoff, Failures
from managers.base import Manager
from managers.config import AuthConfig, Config
from managers.mysql import MySQLManager, Row

log = logging.getLogger("singleton.auth")

ADMIN = "admin"
USER = "user"
ROLES = (ADMIN, USER)

_ALPHABET = string.ascii_letters + string.digits
_BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase  # the checksum's digits
_RANDOM_CHARS = 32
_CHECKSUM_CHARS = 6  # 62**6 > 2**32: any CRC32
_PREFIX_CHARS = 8
KEY_PREFIX = "sgl"  # this service's own: `sk_` is Stripe's to secret scanners
KEY_PATTERN = re.compile(
    rf"^{KEY_PREFIX}_(?:{ADMIN}|{USER})_([0-9A-Za-z]{{{_RANDOM_CHARS}}})([0-9A-Za-z]{{{_CHECKSUM_CHARS}}})$"
)
LEGACY_KEY_PATTERN = re.compile(rf"^sk_({ADMIN}|{USER})_[0-9A-Za-z]{{{_RANDOM_CHARS}}}$")  # until revoked
WARN_DISABLED_EVERY_S = 60.0
_CACHE_MAX = 10_000  # verdicts kept at most (unknown keys included, so guessing cannot grow memory)
_LAST_USED_EVERY_S = 60  # last_used_at is written at most this often per key and instance
# A valid key used in the last tenth of its verdict's TTL is looked up again in the background.
REFRESH_AHEAD = 0.1
_BOOTSTRAP_LOCK = "singleton_bootstrap_admin_key"
_COLUMNS = "id, prefix, role, user_id, created_at, last_used_at, revoked_at"


class Principal(NamedTuple):
    """The caller, once its key checked out."""

    key_id: str
    role: str
    user_id: str | None

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN

    def can_see(self, user_id: str | None) -> bool:
        """Admin sees everything; a user key only its own user's resources."""
        return self.role == ADMIN or (user_id is not None and user_id == self.user_id)


class InvalidToken(ValueError):
    """A WebSocket token that is missing, malformed, forged or expired."""


class TokenClaims(NamedTuple):
    """What a WebSocket token we signed says."""

    user_id: str
    key_id: str | None  # the key that minted it; None in a token minted before ``kid`` existed
    expires_at: int  # epoch seconds


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def checksum(random_part: str) -> str:
    """The CRC32 of a key's random characters, as 6 base-62 digits."""
    value, digits = zlib.crc32(random_part.encode()), []
    for _ in range(_CHECKSUM_CHARS):
        value, digit = divmod(value, 62)
        digits.append(_BASE62[digit])
    return "".join(reversed(digits))


def new_key(role: str) -> str:
    random_part = "".join(secrets.choice(_ALPHABET) for _ in range(_RANDOM_CHARS))
    return f"{KEY_PREFIX}_{role}_{random_part}{checksum(random_part)}"


def well_formed(key: str) -> bool:
    """A key of the current format whose checksum verifies, or one of the first format:
    only those are worth a lookup."""
    match = KEY_PATTERN.match(key)
    if match is not None:
        return hmac.compare_digest(checksum(match.group(1)), match.group(2))
    return LEGACY_KEY_PATTERN.match(key) is not None


def key_prefix(key: str) -> str:
    """What is stored to find the key's row: ``<prefix>_<role>_`` and 8 random characters."""
    role_end = key.index("_", key.index("_") + 1) + 1
    return key[: role_end + _PREFIX_CHARS]


def expires_at(epoch_s: float) -> str:
    """A token's expiry as the API shows it (RFC 3339, UTC)."""
    return codec.rfc3339(dt.datetime.fromtimestamp(epoch_s, dt.UTC))


def key_to_api(row: Row) -> dict[str, Any]:
    """A key as the API lists it: never its secret, nor its hash."""
    return codec.api_view(row, ("id", "prefix", "role", "user_id"), ("created_at", "last_used_at", "revoked_at"))


# -- keys in MariaDB --------------------------------------------------------------------------
async def create_key(role: str, user_id: str | None = None, actor: Actor = OPERATOR) -> dict[str, Any]:
    """A new key; the returned ``key`` is the only time the secret is shown. ``actor`` made
    it (its audit row, in the key's transaction)."""
    if role not in ROLES:
        raise APIError(422, "validation_failed", f"role must be one of: {', '.join(ROLES)}")
    if (role == USER) != (user_id is not None):
        raise APIError(422, "validation_failed", "a user key needs user_id; an admin key takes none")
    key = new_key(role)
    key_id, now = str(uuid.uuid4()), codec.utc_now()
    row = {
        "id": key_id,
        "prefix": key_prefix(key),
        "role": role,
        "user_id": user_id,
        "created_at": now,
        "last_used_at": None,
        "revoked_at": None,
    }
    # Keys live in the global home and the user on its shard: no foreign key can join
    # them, so the user is looked up first (users are never deleted).
    if user_id is not None and not await users.exists(user_id):
        raise user_not_found(user_id)
    async with MySQLManager.instance().home.transaction() as tx:
        await tx.script(
            [
                (
                    "INSERT INTO api_keys (id, prefix, hash, role, user_id, created_at)"
                    " VALUES (%s, %s, %s, %s, %s, %s)",
                    (key_id, row["prefix"], _hash(key), role, user_id, now),
                ),
                audit.insert(
                    actor,
                    audit.Action.API_KEY_CREATED,
                    key_id,
                    audit.diff(None, {"role": role, "user_id": user_id}),
                    at=now,
                ),
            ],
            commit=True,
        )
    created = key_to_api(row)
    del created["last_used_at"], created["revoked_at"]
    return {**created, "key": key}


async def list_keys() -> list[dict[str, Any]]:
    rows = await MySQLManager.instance().home.fetchall(f"SELECT {_COLUMNS} FROM api_keys ORDER BY created_at, id")
    return [key_to_api(row) for row in rows]


async def revoke_key(key_id: str, actor: Actor = OPERATOR) -> dict[str, Any]:
    """Revoke a key (again is a no-op); this instance forgets it at once, and every
    instance closes the sockets its tokens opened (the outbox event, domain/revocations.py).
    A revocation writes ``actor``'s audit row in its transaction (a no-op writes none)."""
    home, now = MySQLManager.instance().home, codec.utc_now()
    async with home.transaction() as tx:
        revoked = await tx.execute(
            "UPDATE api_keys SET revoked_at = %s WHERE id = %s AND revoked_at IS NULL", (now, key_id)
        )
        if revoked:
            changes = audit.diff({"revoked_at": None}, {"revoked_at": codec.rfc3339(now)})
            await tx.execute(*audit.insert(actor, audit.Action.API_KEY_REVOKED, key_id, changes, at=now))
            await tx.execute(*outbox.insert(revocations.key_revoked(key_id)))
        row = await tx.fetchone(f"SELECT {_COLUMNS} FROM api_keys WHERE id = %s", (key_id,))
    if revoked:
        outbox.notify_committed(home)
    if row is None:
        raise not_found("api key", key_id)
    if Authenticator.started():
        Authenticator.instance().forget(key_id)
    return key_to_api(row)


async def bootstrap_admin_key(path: str) -> bool:
    """With no usable admin key in the database, create one and write it to ``path``
    (mode 0600). Several instances starting at once create one key between them."""
    async with MySQLManager.instance().home.cursor() as cur:
        locked = await cur.fetchone("SELECT GET_LOCK(%s, 10) AS ok", (_BOOTSTRAP_LOCK,))
        if not locked or locked["ok"] != 1:
            raise RuntimeError("could not take the admin key bootstrap lock")
        try:
            found = await cur.fetchone(
                "SELECT 1 AS found FROM api_keys WHERE role = %s AND revoked_at IS NULL LIMIT 1", (ADMIN,)
            )
            if found is not None:
                return False
            created = await create_key(ADMIN, actor=audit.operator("bootstrap"))
            _write_private(Path(path), created["key"] + "\n")
        finally:
            await cur.execute("SELECT RELEASE_LOCK(%s)", (_BOOTSTRAP_LOCK,))
    log.warning("no admin key existed: created one", extra={"key_file": path, "key_id": created["id"]})
    return True


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


# -- the per-instance verifier -------------------------------------------------------------------
class Authenticator(Manager):
    """Checks API keys (with a short in-process cache) and WebSocket tokens."""

    health_path = "auth"

    def __init__(self, cfg: AuthConfig):
        # Off only through the bench's own entry point (bench/without.py): never
        # from configuration or the environment.
        self.enabled = True
        self.ttl_s: float = cfg["key_cache_ttl_s"]
        self.token_ttl_s: int = cfg["token_ttl_s"]
        self._secret: str = cfg["token_secret"]
        # sha256(key) -> (principal or None, expires at, monotonic)
        self._verdicts: OrderedDict[str, tuple[Principal | None, float]] = OrderedDict()
        self._last_used_written: dict[str, float] = {}
        self._in_flight: dict[str, asyncio.Future[Principal | None]] = {}  # one lookup per key at a time
        self._key_revoked: OrderedDict[str, tuple[bool, float]] = OrderedDict()  # key id -> (revoked, until)
        self._epoch = 0  # one more at every forget()
        self._forgotten: dict[str, int] = {}  # key id -> the epoch its forget() began, while lookups are in flight
        self._refreshing: dict[str, asyncio.Task[None]] = {}  # sha256(key) -> its background lookup
        self._warning: asyncio.Task[None] | None = None

    @classmethod
    def start(cls, config: Config) -> Authenticator:
        """Install the verifier; with ``bootstrap_admin_key_file`` set, make the dev
        admin key once MariaDB is ready (in the background: it may be down now)."""
        cfg = config["auth"]
        inst = cls._install(cls(cfg))
        metrics.AUTH_DISABLED.set(0)
        if cfg["bootstrap_admin_key_file"]:
            inst._run_in_background(inst._bootstrap_when_ready(cfg["bootstrap_admin_key_file"]), "admin-key-bootstrap")
        return inst

    def disable_for_bench(self) -> None:
        """Every caller acts as admin, for the bench's measure of what checking keys costs.
        Only bench/without.py calls this; the process says so in its log every
        minute, in /health (``auth: disabled``) and in ``singleton_auth_disabled``."""
        self.enabled = False
        metrics.AUTH_DISABLED.set(1)
        self._warning = asyncio.create_task(self._warn_while_disabled(), name="auth-disabled-warning")

    async def _warn_while_disabled(self) -> None:
        while True:
            log.warning("API keys are not checked: every caller acts as admin (the bench's switch)")
            await asyncio.sleep(WARN_DISABLED_EVERY_S)

    def status(self) -> dict[str, str]:
        """For /health: whether API keys are checked."""
        return {"status": "ok" if self.enabled else "disabled"}

    async def _bootstrap_when_ready(self, path: str) -> None:
        """Make the dev admin key once MariaDB is ready. Losing MariaDB meanwhile is an
        outage (wait for it, try again); anything else is a bug, logged as one and retried."""
        db = MySQLManager.instance().home
        failures = Failures(
            "admin_key_bootstrap",
            MySQLManager.is_unavailable,
            logger=log,
            outage="admin key bootstrap postponed: MariaDB unavailable",
            recovered="admin key bootstrap went through",
        )
        backoff = Backoff(1.0, 30.0)
        while True:
            await db.ready.wait()
            try:
                await asyncio.wait_for(bootstrap_admin_key(path), 30)
            except Exception as exc:
                failures.failed(exc)
                await backoff.sleep()
                continue
            failures.succeeded()
            return

    async def authenticate(
        self, key: str, before_lookup: Callable[[], Awaitable[object]] | None = None
    ) -> Principal | None:
        """The principal of ``key``, or None for a malformed, unknown or revoked key.

        ``before_lookup`` runs before a lookup of a key that has no verdict here, or
        whose last one was "no such key" (the rate limiter's per-address bucket: it may
        raise 429); a key found valid before is looked up again without it."""
        digest = _hash(key)
        cached = self._verdicts.get(digest)
        if cached is not None and cached[0] is not None and (left := cached[1] - time.monotonic()) > 0:
            # The common case: a valid key seen within the TTL (only well-formed ones are kept).
            if left < self.ttl_s * REFRESH_AHEAD and digest not in self._refreshing:
                self._refresh(key, digest)
            return cached[0]
        if not well_formed(key):
            return None
        charged = False
        while True:
            cached = self._verdicts.get(digest)
            if cached is not None and cached[1] > time.monotonic():
                return cached[0]
            pending = self._in_flight.get(digest)
            if pending is not None:  # concurrent requests with one key share its lookup
                return await asyncio.shield(pending)
            known_valid = cached is not None and cached[0] is not None
            if charged or known_valid or before_lookup is None:
                break
            await before_lookup()
            charged = True  # and look again: another request may have looked it up meanwhile
        return await self._look_up_once(key, digest)

    def _refresh(self, key: str, digest: str) -> None:
        """Look a valid key up again, in the background, before its verdict expires. Its
        requests go on with the verdict meanwhile (never past its TTL: a revocation still
        takes effect within it), and none waits for the lookup. Without this, every key's
        verdict expired with its requests waiting behind its lookup, and keys first seen
        together fell due together: with 50 busy keys, GET user's p99 was 35 ms against 17
        with keys not checked; 19.5 ms with this (docs/PROFILING.md)."""
        task = self._refreshing[digest] = asyncio.create_task(self._refreshed(key, digest), name="api-key-refresh")
        task.add_done_callback(lambda _: self._refreshing.pop(digest, None))

    async def _refreshed(self, key: str, digest: str) -> None:
        if digest in self._in_flight:  # a request's own lookup began meanwhile: it refreshes the verdict
            return
        try:
            await self._look_up_once(key, digest)
        except Exception as exc:
            # MariaDB out of reach: the verdict expires as it would have, and the next request's
            # own lookup answers 503 (the outage is MySQLManager's to report). Anything else is a bug.
            if not MySQLManager.is_unavailable(exc):
                log.error("api key refresh failed", exc_info=exc)

    async def _look_up_once(self, key: str, digest: str) -> Principal | None:
        """The lookup the concurrent checks of one key share, its verdict kept for the TTL."""
        pending = self._in_flight[digest] = asyncio.get_running_loop().create_future()
        started = time.monotonic()
        epoch = self._epoch
        try:
            principal = await self._lookup(key, digest)
        except asyncio.CancelledError:
            pending.cancel()
            raise
        except Exception as exc:
            pending.set_exception(exc)
            pending.exception()  # retrieved here; waiters re-raise it
            raise
        finally:
            del self._in_flight[digest]
            forgotten = self._forgotten
            if not self._in_flight:  # no lookup left that began before these forgets
                self._forgotten = {}
        overtaken = principal is not None and forgotten.get(principal.key_id, 0) > epoch
        if overtaken:  # revoked while the lookup was in flight: neither trusted nor kept
            principal = None
        pending.set_result(principal)
        if not overtaken:
            self._verdicts[digest] = (principal, started + self.ttl_s)
            self._verdicts.move_to_end(digest)
            while len(self._verdicts) > _CACHE_MAX:
                self._verdicts.popitem(last=False)
        return principal

    async def _lookup(self, key: str, digest: str) -> Principal | None:
        db = MySQLManager.instance().home
        row = await db.fetchone(
            "SELECT id, hash, role, user_id FROM api_keys WHERE prefix = %s AND revoked_at IS NULL",
            (key_prefix(key),),
        )
        if row is None or not hmac.compare_digest(row["hash"], digest):
            return None
        now = time.monotonic()
        if now - self._last_used_written.get(row["id"], -_LAST_USED_EVERY_S) >= _LAST_USED_EVERY_S:
            self._last_used_written[row["id"]] = now
            async with db.cursor() as cur:
                await cur.execute("UPDATE api_keys SET last_used_at = %s WHERE id = %s", (codec.utc_now(), row["id"]))
        return Principal(row["id"], row["role"], row["user_id"])

    def forget(self, key_id: str) -> None:
        """Drop ``key_id``'s verdicts (it was revoked); a lookup of it in flight now will
        not be trusted either."""
        self._epoch += 1
        if self._in_flight:
            self._forgotten[key_id] = self._epoch
        for digest, (principal, _) in list(self._verdicts.items()):
            if principal is not None and principal.key_id == key_id:
                del self._verdicts[digest]

    # -- WebSocket tokens -----------------------------------------------------------------------
    def mint_token(self, user_id: str, key_id: str) -> dict[str, str]:
        """A token for ``user_id``, minted by the key ``key_id`` (its ``kid``)."""
        issued = int(time.time())
        expires = issued + self.token_ttl_s
        claims = {"sub": user_id, "iat": issued, "exp": expires, "jti": uuid.uuid4().hex, "kid": key_id}
        token = jwt.encode(claims, self._secret, algorithm="HS256")
        return {"token": token, "expires_at": expires_at(expires)}

    def verify_token(self, token: str) -> TokenClaims:
        """What the token says; InvalidToken if it is not one we signed, or has expired.
        Whether its key was revoked since is ``key_revoked``'s question (a round trip)."""
        try:
            claims = jwt.decode(token, self._secret, algorithms=["HS256"], options={"require": ["exp", "sub", "jti"]})
        except jwt.InvalidTokenError as exc:
            raise InvalidToken(str(exc)) from None
        if not isinstance(claims["sub"], str):
            raise InvalidToken("sub must be a string")
        key_id = claims.get("kid")
        if key_id is not None and not isinstance(key_id, str):
            raise InvalidToken("kid must be a string")
        return TokenClaims(claims["sub"], key_id, int(claims["exp"]))

    async def key_revoked(self, key_id: str | None) -> bool:
        """Whether the key that minted a token was revoked (or is unknown). A token from
        before ``kid`` names none: not revoked, it lives until it expires. Each answer is
        kept for ``key_cache_ttl_s``, like a key's verdict; the hub also remembers the
        revocations it was told of (managers/websocket_hub.py), so a stale answer here
        cannot keep a socket open."""
        if key_id is None:
            return False
        now = time.monotonic()
        cached = self._key_revoked.get(key_id)
        if cached is not None and cached[1] > now:
            return cached[0]
        row = await MySQLManager.instance().home.fetchone("SELECT revoked_at FROM api_keys WHERE id = %s", (key_id,))
        revoked = row is None or row["revoked_at"] is not None
        self._key_revoked[key_id] = (revoked, now + self.ttl_s)
        self._key_revoked.move_to_end(key_id)
        while len(self._key_revoked) > _CACHE_MAX:
            self._key_revoked.popitem(last=False)
        return revoked

    async def release(self) -> None:
        if self._warning is not None:
            self._warning.cancel()
        for task in list(self._refreshing.values()):
            task.cancel()
        await self._stop_background(5)
