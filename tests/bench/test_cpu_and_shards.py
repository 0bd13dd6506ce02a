"""The bench's pure logic behind the cluster runs: naming a cluster stack's servers in the CPU
columns, keeping them there however small, and pairing the 1-shard and 2-shard rounds."""

from __future__ import annotations

from bench import env, report


def test_a_cluster_stacks_pid_files_name_each_server(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    pids = {"mariadb-a": 11, "mariadb-b": 12, "kafka-2": 13, "redis-5": 14, "kafka": 15, "ferretdb": 16}
    for name, pid in pids.items():
        (run / f"{name}.pid").write_text(f"{pid}\n")
    (run / "mariadbd-a.pid").write_text("99\n")  # the server's own pid file: not devstack's
    (run / "redis-cluster.start").write_text("1\n")
    monkeypatch.setenv("DEVSTACK_DIR", str(tmp_path))
    assert env.own_services() == {
        11: "MariaDB a",
        12: "MariaDB b",
        13: "Kafka 2",
        14: "Redis 5",
        15: "Kafka",
        16: "FerretDB",
    }


def test_the_cpu_split_keeps_every_named_process_and_the_largest_others(monkeypatch):
    monkeypatch.setattr(env, "own_services", lambda: {1: "MariaDB a", 2: "MariaDB b"})
    before = {pid: (f"p{pid}", 0, 0.0) for pid in range(1, 20)}
    after = {1: ("mariadbd", 0, 0.5), 2: ("mariadbd", 0, 0.02), 3: ("python", 0, 4.0)}
    after |= {pid: (f"java{pid}", 0, 1.0 + pid / 100) for pid in range(4, 20)}  # 16 others, all larger
    split = env.cpu_split(before, after, 10.0, {3: "relay a"}, top=2)
    assert split["MariaDB b"] == 0.0  # named: kept, however small
    assert split["MariaDB a"] == 0.05 and split["relay a"] == 0.4
    others = [k for k in split if k.startswith("java")]
    assert others == ["java19", "java18"]  # the two largest of the rest
    assert split["other"] == round(sum(1.0 + pid / 100 for pid in range(4, 18)) / 10, 2)


def test_the_shard_rounds_pair_each_1_shard_run_with_the_next_run_of_all_shards():
    def run(variant: str, rps: float) -> dict:
        return {"kind": "endpoint", "variant": variant, "endpoint": "post_payments", "rps": rps}

    r = {"runs": [run("shipped", 5), run("1 shard", 10), run("2 shards", 19), run("1 shard", 11), run("2 shards", 20)]}
    assert [(a["rps"], b["rps"]) for a, b in report.shard_rounds(r)] == [(10, 19), (11, 20)]
    assert report.shard_rounds({"runs": [run("shipped", 5)]}) == []  # one physical shard: nothing to pair
