"""GET /metrics: Prometheus text that promtool accepts, with our request and dependency series."""

from __future__ import annotations

import shutil
import subprocess

import pytest


@pytest.mark.gen_test
async def test_metrics_pass_promtool_and_carry_request_and_dependency_series(http_client, base_url):
    await http_client.fetch(f"{base_url}/health", raise_error=False)
    await http_client.fetch(f"{base_url}/nope", raise_error=False)
    response = await http_client.fetch(f"{base_url}/metrics")
    assert response.headers["Content-Type"].startswith("text/plain")
    text = response.body.decode()

    assert 'singleton_http_request_duration_seconds_bucket{code="200",handler="HealthHandler",le=' in text
    assert 'singleton_http_requests_total{code="404",handler="NotFoundHandler",method="GET"}' in text
    for dep in ("mysql", "mongodb", "redis", "kafka"):
        assert f'singleton_dependency_up{{dependency="{dep}"}} 1.0' in text
    assert "process_resident_memory_bytes" in text

    promtool = shutil.which("promtool")
    assert promtool, "promtool is installed by `make test` (Debian package prometheus)"
    check = subprocess.run([promtool, "check", "metrics"], input=response.body, capture_output=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
