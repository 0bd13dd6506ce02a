"""Fixtures: one event loop and one set of started managers for the whole session,
against the real backing services that `make services` started; and the two tiers.

``make test`` runs every test. ``make test-unit`` (``pytest --unit``) runs those that
need no server and no external tool, in seconds, on a machine where none was ever
installed. What a test needs is read from what it uses, so a new test cannot land in
the fast tier by forgetting a mark:

- ``integration``: the backing services. Given to every test whose fixtures include
  one of ``SERVER_FIXTURES`` (the started managers, the suite's config with the dev
  secrets, the app on a real port); by hand only to a test that reaches them otherwise
  (a ``python -m service`` of its own).
- ``tools``: a binary that ``make tools`` installs (promtool, Chromium).

Under ``--unit`` both are deselected, and any network connection a test still opens
fails it with a message saying so: a test that passes there needs no server.

``tests/cluster/`` is the cluster suite (``make test-cluster``): tests of the cluster stack
(``make services-cluster``), collected only with ``--cluster``, so neither ``make test`` nor
``make test-unit`` ever runs them.
"""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from pathlib import Path

import pytest
import tornado.ioloop
import tornado.web
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from domain import auth
from domain.analytics_consumer import AnalyticsConsumer
from domain.errors import APIError
from handlers.base import BaseHandler
from managers import config as config_module
from managers.config import ConfigManager
from managers.health import HealthMonitor
from managers.kafka_consumer import BroadcastConsumer
from managers.kafka_producer import KafkaProducerManager
from managers.mongodb import MongoManager
from managers.mysql import MySQLManager
from managers.redis import RedisManager
from service.app import make_app
from service.lifecycle import Lifecycle
from tests.helpers import REPLACEMENTS, TEST_OVERRIDES, UNIT_SECRETS, ensure_database, wait_until

# A test that uses any of these needs the backing services (``http_server`` finds
# the ``app`` fixture by name, so its need does not show in its own closure).
SERVER_FIXTURES = frozenset(
    {"services", "config", "admin_key", "app", "api", "http_server", "http_client", "cluster_config"}
)
NEEDS = ("integration", "tools")
CLUSTER_SUITE = Path(__file__).resolve().parent / "cluster"


def pytest_addoption(parser):
    parser.addoption(
        "--unit",
        action="store_true",
        help="the fast tier: only tests that need no backing service and no external tool; "
        "a network connection fails the test",
    )
    parser.addoption(
        "--cluster",
        action="store_true",
        help="collect tests/cluster too: the cluster suite, against the cluster stack (make test-cluster)",
    )


def pytest_ignore_collect(collection_path: Path, config):
    """tests/cluster/ only with --cluster (None: the other hooks decide)."""
    if not config.getoption("--cluster") and collection_path.is_relative_to(CLUSTER_SUITE):
        return True
    return None


def pytest_configure(config):
    if config.getoption("--unit"):
        _refuse_network()
    if not config.getoption("--cluster"):
        for arg in config.args:
            if Path(arg.split("::")[0]).resolve().is_relative_to(CLUSTER_SUITE):
                raise pytest.UsageError(f"{arg}: the cluster suite runs with --cluster (make test-cluster)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
    if not config.getoption("--unit"):
        return
    needing = [item for item in items if any(item.get_closest_marker(name) for name in NEEDS)]
    if needing:
        config.hook.pytest_deselected(items=needing)
        deselected = set(map(id, needing))
        items[:] = [item for item in items if id(item) not in deselected]


class NetworkInUnitTier(RuntimeError):
    """Not an OSError: no retry loop waiting for a server takes it for one that is down."""


def _refuse_network() -> None:
    """In the fast tier, a connection to any address (loopback included) is a test
    that needs a server and is not marked so."""
    connect, connect_ex = socket.socket.connect, socket.socket.connect_ex

    def check(sock: socket.socket, address) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            raise NetworkInUnitTier(
                f"the fast tier (--unit) opens no connection, here to {address!r}: "
                "mark the test integration, or use a fixture that does (tests/conftest.py)"
            )

    def guarded_connect(self, address):
        check(self, address)
        return connect(self, address)

    def guarded_connect_ex(self, address):
        check(self, address)
        return connect_ex(self, address)

    socket.socket.connect = guarded_connect
    socket.socket.connect_ex = guarded_connect_ex


async def ensure_topic(kafka_cfg: dict, partitions: int = 3) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_cfg["bootstrap_servers"], request_timeout_ms=10000)
    await asyncio.wait_for(admin.start(), 15)
    try:
        await asyncio.wait_for(
            admin.create_topics([NewTopic(kafka_cfg["topic"], num_partitions=partitions, replication_factor=1)]), 15
        )
    except TopicAlreadyExistsError:
        pass
    finally:
        await asyncio.wait_for(admin.close(), 15)


@pytest.fixture(scope="session")
def config() -> dict:
    """The suite's config for the running stack: the environment's ports, the dev secrets."""
    return config_module.load(overrides=TEST_OVERRIDES)


@pytest.fixture(scope="session")
def unit_config() -> dict:
    """The same config for tests that connect to nothing: the repository's file and the
    suite's overrides, no environment, stand-in secrets (no `make services` needed)."""
    sections = {*TEST_OVERRIDES, *UNIT_SECRETS}
    overrides = {name: {**TEST_OVERRIDES.get(name, {}), **UNIT_SECRETS.get(name, {})} for name in sections}
    return config_module.load(env={}, overrides=overrides)


@pytest.fixture(scope="session")
def io_loop():
    """One loop for the session (pytest-tornado's is per test), so the managers,
    whose connections belong to a loop, are started once."""
    loop = tornado.ioloop.IOLoop()
    loop.make_current()
    yield loop
    loop.clear_current()
    loop.close(all_fds=True)


@pytest.fixture(scope="session")
def services(io_loop, config):
    """Every manager started, and every dependency reached, before the first test."""
    ensure_database(config["mysql"])
    io_loop.run_sync(lambda: ensure_topic(config["kafka"]), timeout=60)
    lifecycle = Lifecycle(config)
    io_loop.run_sync(lifecycle.start, timeout=60)

    async def all_connected():
        report = await HealthMonitor.instance().refresh()
        return report["status"] == "ok" and AnalyticsConsumer.instance().consumer is not None

    io_loop.run_sync(lambda: wait_until(all_connected, timeout=90, interval=0.2, what="every dependency"), timeout=100)
    yield lifecycle

    async def stop() -> None:
        while REPLACEMENTS:
            await REPLACEMENTS.pop().close()
        await lifecycle.stop()

    io_loop.run_sync(stop, timeout=60)


@pytest.fixture(scope="session")
def admin_key(services, io_loop) -> str:
    """An admin key of the suite's own, made the way POST /api/v1/api-keys makes them."""
    return io_loop.run_sync(lambda: auth.create_key(auth.ADMIN))["key"]


class EchoHandler(BaseHandler):
    """Test-only: echoes a JSON body, so BaseHandler's parsing is tested over HTTP."""

    public = True

    def post(self) -> None:
        body = self.get_json_body()
        if body == "teapot":
            raise APIError(418, "teapot", "short and stout", details={"spout": True})
        self.write_json({"echo": body})


class ManagersHandler(BaseHandler):
    """Test-only: reports the identity of the managers this handler instance sees."""

    public = True

    def get(self) -> None:
        self.write_json({cls.__name__: id(cls.instance()) for cls in SHARED_MANAGERS})


SHARED_MANAGERS = (ConfigManager, MySQLManager, RedisManager, MongoManager, KafkaProducerManager, BroadcastConsumer)


class GateHandler(BaseHandler):
    """Test-only: holds the request open until the test opens the gate."""

    public = True

    gate: asyncio.Event | None = None

    async def get(self) -> None:
        assert GateHandler.gate is not None
        await GateHandler.gate.wait()
        self.write_json({"done": True})


TEST_ROUTES: list[tuple[str, type[tornado.web.RequestHandler]]] = [
    (r"/_test/echo", EchoHandler),
    (r"/_test/managers", ManagersHandler),
    (r"/_test/gate", GateHandler),
]


@pytest.fixture
def app(services, config) -> tornado.web.Application:
    """The service's app, with the test routes added the way Tornado adds routes to an
    app (on every host, matched before the app's own)."""
    app = make_app(config)
    app.add_handlers(r".*", TEST_ROUTES)
    return app


class Api:
    """JSON over the test server's real HTTP port, as the holder of one API key."""

    def __init__(self, http_client, base_url: str, key: str | None):
        self.http_client, self.base_url, self.key = http_client, base_url, key

    def with_key(self, key: str | None) -> Api:
        return Api(self.http_client, self.base_url, key)

    def at(self, base_url: str) -> Api:
        """The same key, talking to another server."""
        return Api(self.http_client, base_url, self.key)

    async def as_user(self, user_id: str) -> Api:
        """The same client holding a new user key for ``user_id``."""
        return self.with_key((await auth.create_key(auth.USER, user_id))["key"])

    async def request(self, method: str, path: str, body=None, raw: bytes | None = None, headers=None):
        if body is not None:
            raw = json.dumps(body).encode()
        auth_header = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        response = await self.http_client.fetch(
            self.base_url + path,
            method=method,
            body=raw if raw is not None else (b"" if method in ("POST", "PUT") else None),
            headers={"Content-Type": "application/json", **auth_header, **(headers or {})},
            raise_error=False,
            request_timeout=30,
            allow_nonstandard_methods=True,
        )
        payload = json.loads(response.body) if response.body else None
        return response.code, payload, response.headers

    async def get(self, path: str, **kw):
        return await self.request("GET", path, **kw)

    async def post(self, path: str, body=None, **kw):
        return await self.request("POST", path, body, **kw)

    async def put(self, path: str, body=None, **kw):
        return await self.request("PUT", path, body, **kw)

    async def delete(self, path: str, **kw):
        return await self.request("DELETE", path, **kw)

    async def ws_token(self, user_id: str | None = None) -> str:
        code, body, _ = await self.post("/api/v1/ws-tokens", {"user_id": user_id} if user_id else {})
        assert code == 201, body
        return body["token"]

    async def new_user(self, **fields) -> dict:
        body = {"email": f"{uuid.uuid4().hex}@example.com", "name": "Test User", **fields}
        code, user, _ = await self.post("/api/v1/users", body)
        assert code == 201, user
        return user

    async def new_payment(self, user_id: str, amount="100.50", currency="USD", **fields) -> dict:
        body = {"user_id": user_id, "amount": amount, "currency": currency, **fields}
        code, payment, _ = await self.post("/api/v1/payments", body)
        assert code == 201, payment
        return payment


@pytest.fixture
def api(http_client, base_url, admin_key) -> Api:
    """The suite's client, holding the admin key (``api.as_user(id)`` for a user key)."""
    return Api(http_client, base_url, admin_key)
