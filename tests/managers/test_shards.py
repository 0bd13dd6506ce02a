"""Logical shards and the shard map (pure logic), and the config that names them."""

from __future__ import annotations

import uuid

import pytest

from managers import config as config_module
from managers.shards import LOGICAL_SHARDS, ShardMap, ShardMapError, compact, id_range, logical_shard, new_id


def test_a_users_logical_shard_is_its_ids_top_ten_bits() -> None:
    assert logical_shard("00000000-0000-4000-8000-000000000000") == 0
    assert logical_shard("ffffffff-ffff-4fff-bfff-ffffffffffff") == LOGICAL_SHARDS - 1
    assert logical_shard("abc12345-0000-4000-8000-000000000000") == 0xABC >> 2
    assert logical_shard("not an id") == 0  # total: a malformed id is simply not found


@pytest.mark.parametrize("shard", [0, 1, 511, 512, 1023])
def test_a_new_id_carries_its_shard_and_stays_a_random_v4_uuid(shard: int) -> None:
    ids = {new_id(shard) for _ in range(200)}
    assert len(ids) == 200
    for made in ids:
        parsed = uuid.UUID(made)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and str(parsed) == made
        assert logical_shard(made) == shard
        low, high = id_range(shard)
        assert low <= made < high


def test_id_ranges_tile_the_id_space_in_string_order() -> None:
    ranges = [id_range(n) for n in range(LOGICAL_SHARDS)]
    assert ranges[0][0] == "000" and all(ranges[n][1] == ranges[n + 1][0] for n in range(LOGICAL_SHARDS - 1))
    assert "ffffffff-ffff-4fff-bfff-ffffffffffff" < ranges[-1][1]


def test_new_id_refuses_a_shard_that_does_not_exist() -> None:
    with pytest.raises(ValueError):
        new_id(LOGICAL_SHARDS)


def test_the_map_sends_each_logical_shard_to_its_range_and_moves_override_it() -> None:
    shard_map = ShardMap({"a": "0-511", "b": "512-1023"})
    assert [shard_map.physical(n) for n in (0, 511, 512, 1023)] == ["a", "a", "b", "b"]
    shard_map.apply([(7, "b")])
    assert shard_map.physical(7) == "b" and shard_map.physical(8) == "a"
    assert compact(shard_map.held_by("b")) == "7, 512-1023"
    shard_map.apply([])  # the moves are the full set: none left, config's map again
    assert shard_map.physical(7) == "a"


@pytest.mark.parametrize(
    ("ranges", "says"),
    [
        ({"a": "0-511"}, "512-1023 are on no physical shard"),
        ({"a": "0-600", "b": "600-1023"}, "600 is on both a and b"),
        ({"a": "0-1024"}, "from 0 to 1023"),
        ({"a": "zero-9"}, "expected ranges"),
    ],
)
def test_a_map_that_leaves_a_shard_homeless_or_doubled_is_refused(ranges: dict[str, str], says: str) -> None:
    with pytest.raises(ShardMapError, match=says):
        ShardMap(ranges)


def test_config_extends_its_base_key_by_key_and_checks_the_shard_map(tmp_path, unit_config) -> None:
    base = config_module.DEFAULT_PATH
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(
        f"extends: {base}\n"
        "server: {port: 8180}\n"
        "mysql: {password: stand-in, migrate_password: stand-in-too}\n"
        "auth: {token_secret: stand-in-token-secret-0123456789}\n"
        "shards:\n"
        "  global: a\n"
        "  physical:\n"
        "    a: {host: 127.0.0.2, port: 3306, logical: 0-511}\n"
        "    b: {host: 127.0.0.3, port: 3306, logical: 512-1023}\n"
    )
    loaded = config_module.load(cluster, env={})
    assert loaded["server"]["port"] == 8180
    assert loaded["server"]["host"] == unit_config["server"]["host"]  # the rest of the section from the base
    assert loaded["shards"]["physical"]["b"]["host"] == "127.0.0.3"

    cluster.write_text(cluster.read_text().replace("512-1023", "600-1023"))
    with pytest.raises(config_module.ConfigError, match="512-599 are on no physical shard"):
        config_module.load(cluster, env={})
    cluster.write_text(cluster.read_text().replace("600-1023", "512-1023").replace("global: a", "global: c"))
    with pytest.raises(config_module.ConfigError, match="shards.global"):
        config_module.load(cluster, env={})


def test_the_shipped_cluster_config_loads() -> None:
    path = config_module.DEFAULT_PATH.with_name("config.cluster.yaml")
    overrides = {
        "mysql": {"password": "stand-in", "migrate_password": "m"},
        "auth": {"token_secret": "stand-in-token-secret-0123456789"},
    }
    loaded = config_module.load(path, env={}, overrides=overrides)
    assert set(loaded["shards"]["physical"]) == {"a", "b"} and loaded["shards"]["global"] == "a"
    assert len(loaded["kafka"]["bootstrap_servers"].split(",")) == 3
