"""Where a row lives: logical shards, and the map from them to physical shards.

Every user belongs to one of ``LOGICAL_SHARDS`` logical shards, fixed once and for
all: the first 10 bits of the user's id (a random UUID, so users spread evenly).
Everything that is the user's (payments, idempotency keys, outbox rows, status
history) lives with the user, and a payment's id carries its user's logical shard
in the same 10 bits (``new_id``), so a read by payment id goes to one shard,
never to all of them. Both kinds of id stay valid version-4 UUIDs.

Config maps ranges of logical shards to physical shards (MariaDB servers); moving
a logical shard (``python -m service shards move``) records an override in the
global home, which every instance reads (managers/mysql.py). With no ``shards``
section the ``mysql`` section is the one physical shard, holding them all.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping

LOGICAL_SHARDS = 1024
_SHIFT = 128 - 10  # the logical shard is a UUID's top 10 bits
_LOW_BITS = (1 << _SHIFT) - 1
SINGLE = "main"  # the one physical shard's name when config has no `shards` section

_RANGE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


class ShardMapError(ValueError):
    """A shard map that does not give every logical shard exactly one home."""


def logical_shard(entity_id: str) -> int:
    """The logical shard of a user id or a payment id (the top 10 bits of the UUID).

    Total on any string, so that a malformed id routes somewhere and is then simply
    not found there: the first three characters when they are hex, else shard 0.
    """
    try:
        return int(entity_id[:3], 16) >> 2
    except ValueError:
        return 0


def new_id(shard: int) -> str:
    """A random version-4 UUID whose top 10 bits are ``shard``: 112 random bits remain."""
    if not 0 <= shard < LOGICAL_SHARDS:
        raise ValueError(f"logical shard {shard} is not in 0..{LOGICAL_SHARDS - 1}")
    return str(uuid.UUID(int=(shard << _SHIFT) | (uuid.uuid4().int & _LOW_BITS)))


def id_range(shard: int) -> tuple[str, str]:
    """The ids of ``shard`` as a half-open string range [low, high) (ids are lower-case
    hex, so string order is numeric order): what a move copies, by primary key."""
    low = format(shard << 2, "03x")
    high = format((shard + 1) << 2, "03x") if shard + 1 < LOGICAL_SHARDS else "g"
    return low, high


def parse_ranges(spec: str) -> list[int]:
    """ "0-511" or "0-99, 200, 300-310" as the logical shards it names ("" names none: a
    new physical shard, filled by moves)."""
    shards: list[int] = []
    if not spec.strip():
        return shards
    for part in spec.split(","):
        match = _RANGE.match(part)
        if match is None:
            raise ShardMapError(f"{spec!r}: expected ranges like 0-511, 600")
        low = int(match.group(1))
        high = int(match.group(2) or low)
        if not low <= high < LOGICAL_SHARDS:
            raise ShardMapError(f"{part.strip()!r}: logical shards run from 0 to {LOGICAL_SHARDS - 1}")
        shards.extend(range(low, high + 1))
    return shards


class ShardMap:
    """Logical shard -> physical shard name: config's ranges, then moves on top."""

    def __init__(self, ranges: Mapping[str, str]):
        owners: list[str | None] = [None] * LOGICAL_SHARDS
        for physical, spec in ranges.items():
            for shard in parse_ranges(spec):
                if owners[shard] is not None:
                    raise ShardMapError(f"logical shard {shard} is on both {owners[shard]} and {physical}")
                owners[shard] = physical
        missing = [n for n, owner in enumerate(owners) if owner is None]
        if missing:
            raise ShardMapError(f"logical shards {compact(missing)} are on no physical shard")
        self._configured: list[str] = [owner for owner in owners if owner is not None]
        self._owners = list(self._configured)

    @classmethod
    def single(cls) -> ShardMap:
        return cls({SINGLE: f"0-{LOGICAL_SHARDS - 1}"})

    def physical(self, shard: int) -> str:
        return self._owners[shard]

    def apply(self, moves: Iterable[tuple[int, str]]) -> None:
        """Config's map with these (logical, physical) overrides on top (the full set)."""
        owners = list(self._configured)
        for shard, physical in moves:
            owners[shard] = physical
        self._owners = owners

    def held_by(self, physical: str) -> list[int]:
        return [n for n, owner in enumerate(self._owners) if owner == physical]


def compact(shards: list[int]) -> str:
    """[0, 1, 2, 7] as "0-2, 7"."""
    parts, start = [], None
    for i, n in enumerate(shards):
        if start is None:
            start = n
        if i + 1 == len(shards) or shards[i + 1] != n + 1:
            parts.append(f"{start}-{n}" if n != start else str(n))
            start = None
    return ", ".join(parts)
