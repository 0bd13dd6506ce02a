"""The bench's CPU columns (the stack's servers named from devstack's pid files, and kept there
however small) and the costs of GET user's parts, from the service's CPU per request."""

from __future__ import annotations

import pytest

from bench import __main__ as bench_main
from bench import env, report


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


def _get_user(variant: str, round_: int, cpu_us: float, rps: float) -> dict:
    return {"kind": "cost", "variant": variant, "endpoint": "get_user", "round": round_, "cpu_us": cpu_us, "rps": rps}


def test_a_cost_is_one_minus_cpu_per_request_without_the_part_over_with_it_the_median_of_the_rounds():
    # The limiter's cost: "key check + limiter" (with it) against "key check" (without), round by round.
    # req/s moves the other way in round 2 (another process took part of the core): it must not count.
    with_it, without = [250.0, 260.0, 255.0], [240.0, 250.0, 230.0]
    runs = [_get_user("key check + limiter", k, us, 4000) for k, us in enumerate(with_it)]
    runs += [_get_user("key check", k, us, 3000 if k == 1 else 4100) for k, us in enumerate(without)]
    rounds = report.costs({"runs": runs})["rate limiter"]
    assert rounds == pytest.approx([1 - 240 / 250, 1 - 250 / 260, 1 - 230 / 255])
    assert report.measures({"runs": runs})["limiter_cost"] == pytest.approx(1 - 240 / 250)  # the median
    assert report.costs({"runs": runs})["metrics"] == []  # "no metrics" not run: no cost, no invented number


def _post(cores: dict[str, float]) -> dict:
    return {"endpoint": "post_payments", "rps": 800, "floor_rps": 2000, "cpu_us": 1000, "floor_cpu_us": 400} | {
        "cpu_cores": {"service": 0.8} | cores
    }


def test_a_target_leaves_the_service_what_the_other_processes_would_not_take_at_its_rate():
    # POST's target, 70% of a 2,000 req/s floor: 1,400 req/s. The others used 0.6 core at 800 req/s,
    # 750 µs a request: 1.05 cores at 1,400 req/s, which leaves 0.95 core, 679 µs a request.
    assert report.left(_post({"MariaDB": 0.5, "wrk": 0.1}), cores=2) == "679 / 1,000 / 400"
    # 0.7 core at 1,400 req/s leaves 1.3 cores, but one process uses one at most: 714 µs a request.
    assert report.left(_post({"MariaDB": 0.3, "wrk": 0.1}), cores=2) == "714 / 1,000 / 400"
    # 1.2 cores at 800 req/s is 1,500 µs a request, 2.1 cores at 1,400: more than the machine has.
    assert report.left(_post({"MariaDB": 0.8, "FerretDB": 0.4}), cores=2) == "-71 / 1,000 / 400"
    assert report.left(_post({}) | {"endpoint": "list_filtered"}, cores=2) == "—"  # no ratio target
    kept_no_floor_cpu = {k: v for k, v in _post({}).items() if k != "floor_cpu_us"}  # an older run
    assert report.left(kept_no_floor_cpu, cores=2) == "—"


def test_each_round_runs_the_variants_in_another_order():
    names = ["a", "b", "c"]
    assert bench_main.rotations(names, 4) == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]


def test_the_page_flags_a_cost_run_whose_service_was_under_095_core():
    runs = [_get_user(v, 1, 250.0, 4000) | {"cpu_cores": {"service": 1.0}} for v in report.VARIANTS]
    runs[2]["cpu_cores"]["service"] = 0.9
    page = "\n".join(report.costs_section({"runs": runs}))
    assert "Under 0.95 core" in page and "round 1, key check + limiter (0.90)" in page
    runs[2]["cpu_cores"]["service"] = 0.99
    assert "Under 0.95 core" not in "\n".join(report.costs_section({"runs": runs}))
