"""MariaDB sharded by user, on two servers: losing one shard costs its own users only."""

from __future__ import annotations

import os
import signal

import pytest

from managers.shards import ShardMap, logical_shard
from tests.cluster.conftest import devstack, server_pid
from tests.helpers import wait_until


def shard_of(cluster_config, user_id: str) -> str:
    physical = cluster_config["shards"]["physical"]
    shard_map = ShardMap({name: shard["logical"] for name, shard in physical.items()})
    return shard_map.physical(logical_shard(user_id))


@pytest.mark.gen_test(timeout=300)
async def test_with_one_shard_down_only_its_users_wait_and_health_says_degraded(cluster_service, cluster_config):
    api = cluster_service.api
    placed: dict[str, list[dict]] = {"a": [], "b": []}
    while min(len(people) for people in placed.values()) < 3:  # ids are random: half land on each
        user = await api.new_user()
        placed[shard_of(cluster_config, user["id"])].append(user)
    for people in placed.values():
        for person in people:
            await api.new_payment(person["id"])

    devstack("down", "mariadb-b")
    try:

        async def b_refused() -> bool:
            code, _, _ = await api.get(f"/api/v1/users/{placed['b'][0]['id']}/payments")
            return code == 503

        await wait_until(b_refused, timeout=30, what="shard b's users refused")
        for person in placed["b"]:
            code, body, headers = await api.post(
                "/api/v1/payments", {"user_id": person["id"], "amount": "1.00", "currency": "USD"}
            )
            assert code == 503 and headers.get("Retry-After") == "1", body
            assert body["error"]["code"] == "dependency_unavailable"
        for person in placed["a"]:  # everyone else as usual
            assert (await api.new_payment(person["id"]))["user_id"] == person["id"]
            code, page, _ = await api.get(f"/api/v1/users/{person['id']}/payments")
            assert code == 200 and len(page["items"]) == 2

        async def degraded() -> dict | None:
            code, report, _ = await api.get("/health")
            return report if code == 200 and report["status"] == "degraded" else None

        report = await wait_until(degraded, timeout=30, what="/health degraded")
        mysql = report["dependencies"]["mysql"]
        assert mysql["status"] == "degraded" and mysql["shards"]["a"]["status"] == "ok"
        assert mysql["shards"]["b"]["status"] == "down"
        assert (await api.get("/health/ready"))[0] == 200
    finally:
        devstack("up", "mariadb-b")

    async def b_served() -> bool:
        code, _, _ = await api.post(
            "/api/v1/payments", {"user_id": placed["b"][0]["id"], "amount": "1.00", "currency": "USD"}
        )
        return code == 201

    await wait_until(b_served, timeout=60, interval=0.5, what="shard b's users served again")
    code, report, _ = await api.get("/health")
    assert code == 200


@pytest.mark.gen_test(timeout=120)
async def test_a_hung_shard_is_that_shard_down_not_mariadb(cluster_service):
    """SIGSTOP: connections stay open and nothing answers, so only deadlines tell."""
    api, pid = cluster_service.api, server_pid("mariadb-b")
    os.kill(pid, signal.SIGSTOP)
    try:

        async def b_down() -> dict | None:
            code, report, _ = await api.get("/health")
            shards = report.get("dependencies", {}).get("mysql", {}).get("shards", {})
            return report if code == 200 and shards.get("b", {}).get("status") == "down" else None

        report = await wait_until(b_down, timeout=30, what="shard b reported down while hung")
        assert report["status"] == "degraded" and report["ready"] is True
    finally:
        os.kill(pid, signal.SIGCONT)
