"""The bench's CPU columns: the stack's servers named from devstack's pid files, and kept
there however small."""

from __future__ import annotations

from bench import env


def test_devstacks_pid_files_name_each_server(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    for name, pid in {"mariadb": 11, "redis": 12, "kafka": 13, "postgres": 14, "ferretdb": 15}.items():
        (run / f"{name}.pid").write_text(f"{pid}\n")
    (run / "mariadbd.pid").write_text("99\n")  # the server's own pid file: not devstack's
    (run / "kafka.start").write_text("1\n")
    monkeypatch.setenv("DEVSTACK_DIR", str(tmp_path))
    assert env.own_services() == {11: "MariaDB", 12: "Redis", 13: "Kafka", 14: "PostgreSQL", 15: "FerretDB"}


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
