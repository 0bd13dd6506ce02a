"""The OpenAPI document against the running service, checked by schemathesis, tuned and untuned.

A real ``python -m service`` on the real backing services, on a database of its own
made empty for each run, with the suite's other overrides (rate limits far above what
the run sends). It holds an admin key made the way an operator makes one
(``python -m service keys create``). schemathesis runs three times at once (each
client keeps a core busy; the service, a fraction of one), all with the same fixed seed:

1. tuned (``schemathesis.toml`` beside this file): every check, every phase, 200
   examples per operation (one to two minutes). The config gives it test data (a user
   that exists, real currencies, a key to revoke) and, per operation, the 4xx statuses
   no JSON Schema can rule out, each with its reason; so it is the run that judges
   ``positive_data_acceptance``: valid requests reach the service's own rules and pass.
2. tuned, the stateful phase again for a fixed time. Each of its suites ends as soon as
   the service's state changes what Hypothesis draws (it counts that as flaky, not as a
   failure), so one pass covers only a few links; repeating it covers most of them.
3. untuned (``untuned.toml``): the document alone, as a stranger's fuzzer reads it:
   every check but ``positive_data_acceptance`` (which needs what no schema holds: a
   cursor the service issued, the ISO 4217 list, users that exist), no test data, no
   expected statuses, every phase, 50 examples per operation; all but revoking a key
   (it would revoke its own). It holds the service to every status, header and body
   the document declares for any input, and to rejecting whatever the document calls
   invalid.

The whole report of a failing run is the failure message, followed by any error the
service logged during the run.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import pytest

from domain.schemas import openapi
from tests.conftest import ensure_topic
from tests.helpers import (
    ROOT,
    free_port,
    fresh_database,
    in_thread,
    run_service,
    service_env,
    terminate,
    wait_healthy,
)

TUNED = Path(__file__).with_name("schemathesis.toml")
UNTUNED = Path(__file__).with_name("untuned.toml")
UNTUNED_LEFT_OUT = "DELETE /api/v1/api-keys/{id}"
DATABASE = "singleton_test_contract"
MIN_EXAMPLES = 200
STATEFUL_SECONDS = 60
RUN_TIMEOUT_S = 480  # a hang guard: the runs take two to three minutes on 2 cores (six at a load of 10)
SCHEMA_ITSELF = "GET /openapi.json"  # schemathesis does not fuzz the document it loaded


@pytest.fixture
def contract_env(config, io_loop):
    """The environment of the service and the CLI: the suite's, on an empty database, with a
    topic, an analytics group and an analytics database of its own: the thousands of events
    the runs make never queue before the suite's own consumers (which later tests wait on)."""
    fresh_database(config["mysql"], DATABASE)
    io_loop.run_sync(lambda: ensure_topic({**config["kafka"], "topic": DATABASE}), timeout=60)
    return service_env(
        SINGLETON_MYSQL__DATABASE=DATABASE,
        SINGLETON_KAFKA__TOPIC=DATABASE,
        SINGLETON_KAFKA__ANALYTICS_GROUP=DATABASE,
        SINGLETON_MONGODB__DATABASE=DATABASE,
    )


@pytest.fixture
def live_service(io_loop, contract_env, tmp_path):
    """``python -m service`` on a free port; yields its URL and the path of its log."""
    port = free_port()
    log_path = tmp_path / "service.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service", "--port", str(port)],
            cwd=ROOT,
            env=contract_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        io_loop.run_sync(lambda: wait_healthy(proc, port), timeout=70)
        yield f"http://127.0.0.1:{port}", log_path
    finally:
        io_loop.run_sync(lambda: terminate(proc), timeout=40)
    assert proc.returncode == 0, log_path.read_text()[-4000:]


def admin_call(base_url: str, key: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(
        base_url + path,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


async def schemathesis(
    config: Path, base_url: str, env: dict[str, str], workdir: Path, *options: str
) -> subprocess.CompletedProcess:
    return await in_thread(
        subprocess.run,
        [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run", "--no-color", *options]
        + [f"{base_url}/openapi.json"],
        cwd=workdir,  # anything schemathesis writes stays out of the tree
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )


def operations() -> dict[str, bool]:
    """Every documented operation, and whether it takes any input (parameter or body):
    of one that takes none, schemathesis has one request to make, and makes it once."""
    return {
        f"{method.upper()} {path}": bool(item.get("parameters") or op.get("parameters") or op.get("requestBody"))
        for path, item in openapi()["paths"].items()
        for method, op in item.items()
        if method != "parameters"
    }


def fuzzed_per_operation(report: Path) -> Counter:
    """Test cases of the fuzzing phase per operation, from schemathesis's NDJSON report."""
    counts: Counter = Counter()
    with report.open() as events:
        for line in events:
            finished = json.loads(line).get("ScenarioFinished")
            if finished and finished["phase"] == "fuzzing" and finished["recorder"]:
                for case in finished["recorder"]["cases"].values():
                    counts[f"{case['value']['method']} {case['value']['path']}"] += 1
    return counts


@pytest.mark.timeout(RUN_TIMEOUT_S + 60)
@pytest.mark.gen_test(timeout=RUN_TIMEOUT_S + 30)
async def test_the_service_keeps_every_promise_of_its_openapi_document(contract_env, live_service, tmp_path):
    base_url, service_log = live_service
    healthy_at = service_log.stat().st_size  # what the service logged while it started is not the run's
    created = await run_service("keys", "create", "--role", "admin", env=contract_env)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    user = admin_call(base_url, key, "/api/v1/users", {"email": f"{uuid.uuid4().hex}@example.com", "name": "Contract"})
    revocable = admin_call(base_url, key, "/api/v1/api-keys", {"role": "user", "user_id": user["id"]})
    env = {
        **os.environ,
        "CONTRACT_ADMIN_KEY": key,
        "CONTRACT_USER_ID": user["id"],
        "CONTRACT_REVOCABLE_KEY_ID": revocable["id"],
    }
    report, untuned_report = tmp_path / "run.ndjson", tmp_path / "untuned.ndjson"
    fuzzing, stateful, untuned = tmp_path / "fuzzing", tmp_path / "stateful", tmp_path / "untuned"
    fuzzing.mkdir(), stateful.mkdir(), untuned.mkdir()

    runs = await asyncio.gather(
        schemathesis(TUNED, base_url, env, fuzzing, "--report", "ndjson", "--report-ndjson-path", str(report)),
        schemathesis(TUNED, base_url, env, stateful, "--phases", "stateful", "--max-time", str(STATEFUL_SECONDS)),
        schemathesis(
            UNTUNED,
            base_url,
            env,
            untuned,
            *("--checks", "all", "--exclude-checks", "positive_data_acceptance"),
            *("--report", "ndjson", "--report-ndjson-path", str(untuned_report)),
        ),
    )

    logged = service_log.read_bytes()[healthy_at:].decode(errors="replace")
    errors = [line for line in logged.splitlines() if '"level": "error"' in line]
    for result in runs:
        assert result.returncode == 0, result.stdout + result.stderr + "\n".join(errors[:20])
    assert errors == [], "\n".join(errors[:20])
    counts = fuzzed_per_operation(report)
    documented = operations()
    assert set(documented) - set(counts) == {SCHEMA_ITSELF}, f"not fuzzed: {set(documented) - set(counts)}"
    thin = {op: n for op, n in counts.items() if n < MIN_EXAMPLES and documented[op]}
    assert not thin, f"fewer than {MIN_EXAMPLES} examples: {thin} (all: {dict(counts)})"
    untuned_counts = fuzzed_per_operation(untuned_report)
    assert set(documented) - set(untuned_counts) == {SCHEMA_ITSELF, UNTUNED_LEFT_OUT}, dict(untuned_counts)
