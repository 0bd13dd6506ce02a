"""The audit trail: who did what, written in the transaction of the change it records.

An audited change adds ``insert(actor, action, resource_id, changes)`` to the statements
of its own transaction (as an event adds ``outbox.insert``), so its row exists exactly
when the change committed: a change refused or rolled back leaves none. The table is
append-only: the service's MariaDB user may INSERT and SELECT it, nothing else
(migrations/0004_audit.sql); rows are kept until an operator archives them.

Each row says who (``Actor``: the API key, the request id, the client's address; an
operator's command on the host has no key), what (an ``Action`` on a resource) and what
changed (``diff``: each field's old and new value; never a secret, never an email).

Where rows live: a global resource's (an API key's) in the home; a user's resource's (a
payment's) on that user's shard, with the user as ``owner_id`` so a shard move takes them
along. Such a resource's id carries its logical shard (managers/shards.py ``new_id``), so
the rows of one resource are read from one shard; a list of everything merges every shard
by time (``page``).

Adding an action (a refund, issue 18): a member of ``Action`` named ``<resource>.<verb>``
(and a ``Resource`` if the resource is new, with where it lives), the ``insert`` in the
change's transaction, and the value in openapi.yaml's ``AuditEvent.action`` enum.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import enum
import json
import uuid
from collections.abc import Mapping
from typing import Any, NamedTuple

from domain import codec
from domain.errors import APIError
from managers.mysql import Database, MySQLManager, Row, Statement


class Actor(NamedTuple):
    """Who asked for a change: the caller's API key, its request's id and the client's
    address. An operator's command on the host (``python -m service keys``, the dev admin
    key's bootstrap) has no key and no address (``operator``)."""

    key_id: str | None
    request_id: str | None
    remote_ip: str | None


OPERATOR = Actor(None, None, None)  # an operator's call that names no command


def operator(command: str) -> Actor:
    """An operator's command on the host: no key, no address, a request id of its own."""
    return Actor(None, f"{command}-{uuid.uuid4().hex[:16]}", None)


class Resource(enum.StrEnum):
    API_KEY = "api_key"
    PAYMENT = "payment"


# Resources whose rows live on their user's shard (the resource's id carries its logical
# shard); the others' live in the global home.
ON_USER_SHARD = frozenset({Resource.PAYMENT})


class Action(enum.StrEnum):
    """What happened, as ``<resource>.<verb>``."""

    API_KEY_CREATED = "api_key.created"
    API_KEY_REVOKED = "api_key.revoked"
    PAYMENT_CREATED = "payment.created"
    PAYMENT_STATUS_CHANGED = "payment.status_changed"
    PAYMENT_REFUNDED = "payment.refunded"

    @property
    def resource(self) -> Resource:
        return Resource(self.value.partition(".")[0])


Changes = dict[str, dict[str, Any]]  # field -> {"from": old, "to": new}


def diff(before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> Changes:
    """The fields of ``after`` whose value differs from ``before``'s (a creation: ``before``
    None, every field from null)."""
    old = before or {}
    return {name: {"from": old.get(name), "to": value} for name, value in after.items() if old.get(name) != value}


_COLUMNS = "id, created_at, actor_key_id, request_id, remote_ip, action, resource_type, resource_id, changes"


def insert(
    actor: Actor,
    action: Action,
    resource_id: str,
    changes: Changes,
    owner_id: str | None = None,
    at: dt.datetime | None = None,
) -> Statement:
    """The statement that records ``action``; run it in the transaction of the change, on
    the database that holds the resource (``owner_id``: the user whose shard that is, for a
    resource that lives on one; None for one that lives in the home)."""
    if (action.resource in ON_USER_SHARD) != (owner_id is not None):
        raise ValueError(f"{action}: owner_id is {'required' if owner_id is None else 'not taken'}")
    return (
        "INSERT INTO audit_events (id, created_at, actor_key_id, request_id, remote_ip, action, resource_type,"
        " resource_id, owner_id, changes) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            str(uuid.uuid4()),
            at or codec.utc_now(),
            *actor,
            action.value,
            action.resource.value,
            resource_id,
            owner_id,
            codec.dumps(changes).decode(),
        ),
    )


def to_api(row: Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "at": codec.rfc3339(row["created_at"]),
        "actor_key_id": row["actor_key_id"],
        "request_id": row["request_id"],
        "remote_ip": row["remote_ip"],
        "action": row["action"],
        "resource_type": row["resource_type"],
        "resource_id": row["resource_id"],
        "changes": codec.loads(row["changes"]),
    }


# -- pages ----------------------------------------------------------------------------------
def encode_cursor(row: Row) -> str:
    raw = json.dumps([row["created_at"].isoformat(), row["id"]]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[dt.datetime, str]:
    invalid = APIError(400, "invalid_cursor", "cursor is not one this service issued")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, row_id = codec.loads(raw)
        when = dt.datetime.fromisoformat(created_at)
    except (ValueError, TypeError, binascii.Error):
        raise invalid from None
    if when.tzinfo is not None or not isinstance(row_id, str) or not codec.is_uuid(row_id):
        raise invalid
    return when, row_id


def _databases(resource_type: Resource | None, resource_id: str | None) -> list[Database]:
    """Where the rows asked for live: one resource's on one database; a resource type that
    lives in the home, there; anything else on every shard (the home among them)."""
    mysql = MySQLManager.instance()
    if resource_type is not None and resource_type not in ON_USER_SHARD:
        return [mysql.home]
    if resource_type is not None and resource_id is not None:
        return [mysql.for_id(resource_id)]
    return mysql.all()


async def page(
    limit: int, cursor: str | None, resource_type: Resource | None = None, resource_id: str | None = None
) -> dict[str, Any]:
    """A page of audit rows, newest first, optionally of one resource type or one resource.

    Each database that may hold such rows is read for its newest ``limit + 1`` after the
    cursor, at once, and the answers merged by (time, id): a page costs one query per shard
    read. A row found twice (a shard move copies before it deletes) is shown once."""
    where: list[str] = []
    args: list[object] = []
    if resource_type is not None:
        where.append("resource_type = %s")
        args.append(resource_type.value)
    if resource_id is not None:
        where.append("resource_id = %s")
        args.append(resource_id)
    if cursor is not None:
        created_at, row_id = decode_cursor(cursor)
        where.append("(created_at < %s OR (created_at = %s AND id < %s))")
        args += [created_at, created_at, row_id]
    sql = (
        f"SELECT {_COLUMNS} FROM audit_events {'WHERE ' + ' AND '.join(where) if where else ''}"
        " ORDER BY created_at DESC, id DESC LIMIT %s"
    )
    databases = _databases(resource_type, resource_id)
    answers = await asyncio.gather(*(db.fetchall(sql, (*args, limit + 1)) for db in databases))
    if resource_type in ON_USER_SHARD and resource_id is not None and cursor is None and not answers[0]:
        await MySQLManager.instance().missing(databases[0], resource_id)  # its shard moving: a retry
    rows = sorted(
        {row["id"]: row for answer in answers for row in answer}.values(),
        key=lambda row: (row["created_at"], row["id"]),
        reverse=True,
    )
    page_rows, more = rows[:limit], len(rows) > limit
    return {"items": [to_api(r) for r in page_rows], "next_cursor": encode_cursor(page_rows[-1]) if more else None}
