"""The cluster stage of ``make chaos`` (chaos/cluster*.py): its pure parts, without a stack.
The stage itself is run by ``make chaos-cluster``, not by the test suite."""

from __future__ import annotations

from pathlib import Path

import yaml

from chaos.backlog import longest_stall
from chaos.cluster import CLUSTER_CONFIG, _readdress
from chaos.cluster_scenarios import longest_gap


def test_the_generated_configuration_is_config_cluster_yaml_on_the_copys_addresses():
    state = Path("/tmp/chaos-copy")
    original = yaml.safe_load(CLUSTER_CONFIG.read_text())
    copy = _readdress(original, "127.0.5", state)
    text = yaml.safe_dump(copy)
    assert "127.0.0." not in text and ".devstack-cluster" not in text
    assert copy["shards"]["physical"]["a"]["host"] == "127.0.5.2"
    assert copy["shards"]["physical"]["b"]["host"] == "127.0.5.3"
    assert copy["kafka"]["bootstrap_servers"] == "127.0.5.21:9092,127.0.5.22:9092,127.0.5.23:9092"
    assert copy["redis"]["cluster_nodes"][0] == "127.0.5.11:6379"
    assert copy["mysql"]["password_file"] == str(state / "secrets" / "mysql.password")
    assert copy["mysql"]["migrate_password_file"] == str(state / "secrets" / "mysql-migrate.password")
    # everything else as it was: the same keys, the same ports
    assert copy["shards"]["physical"]["a"]["logical"] == original["shards"]["physical"]["a"]["logical"]
    assert copy["server"] == original["server"]


def test_an_address_is_moved_only_where_it_is_one():
    assert _readdress("127.0.0.21:9092,127.0.0.3", "127.0.9", Path("/s")) == "127.0.9.21:9092,127.0.9.3"
    assert _readdress("127.0.0.123", "127.0.9", Path("/s")) == "127.0.9.123"
    assert _readdress("10.127.0.0.1", "127.0.9", Path("/s")) == "10.127.0.0.1"
    assert _readdress(3306, "127.0.9", Path("/s")) == 3306


def test_a_stall_is_committed_offsets_standing_still_while_a_backlog_waits():
    #          t:   0    1    2    3    4    5    6    7
    backlog = [(t, n) for t, n in enumerate([5, 5, 9, 12, 15, 3, 0, 0])]
    committed = [(t, n) for t, n in enumerate([10, 12, 12, 12, 12, 30, 35, 35])]
    assert longest_stall(backlog, committed, 0, 7) == (3.0, 1)  # still from 1 to 4, moving at 5


def test_no_backlog_is_no_stall_and_the_window_bounds_it():
    backlog = [(t, 0) for t in range(6)]
    committed = [(t, 7) for t in range(6)]
    assert longest_stall(backlog, committed, 0, 5) == (0.0, None)
    backlog = [(t, 4) for t in range(6)]
    assert longest_stall(backlog, committed, 2, 4) == (2.0, 2)


def test_a_gap_counts_from_the_window_s_edges():
    assert longest_gap([1.0, 2.0, 6.5, 7.0], 0.0, 8.0) == 4.5
    assert longest_gap([], 0.0, 3.0) == 3.0
