"""GET /metrics on its own listener: Prometheus text that promtool accepts, with our
request and dependency series; and not on the API port."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import tornado.httpserver
import tornado.testing

from service.app import make_ops_app


@pytest.fixture
def metrics_url(services):
    sock, port = tornado.testing.bind_unused_port()
    server = tornado.httpserver.HTTPServer(make_ops_app())
    server.add_sockets([sock])
    yield f"http://127.0.0.1:{port}/metrics"
    server.stop()


@pytest.mark.tools
@pytest.mark.gen_test
async def test_metrics_pass_promtool_and_carry_request_and_dependency_series(api, http_client, metrics_url):
    await api.get("/health")
    await api.get("/nope")
    response = await http_client.fetch(metrics_url)
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


@pytest.mark.gen_test
async def test_the_api_port_does_not_serve_metrics(api):
    code, body, _ = await api.get("/metrics")
    assert code == 404 and body["error"]["code"] == "not_found"
