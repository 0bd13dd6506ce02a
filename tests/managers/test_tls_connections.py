"""Each client over TLS to the everyday stack's TLS endpoints (devstack/lib/tls.sh), with its
certificate checked: devstack's CA gets in, another CA's does not (an outage, with the
reason in its text), and MariaDB's connection is encrypted or refused."""

from __future__ import annotations

import asyncio
import ssl
import subprocess

import pymysql
import pytest
from pymysql.constants import CLIENT

from managers import redis as redis_manager
from managers import tls
from managers.kafka_producer import KafkaProducerManager
from managers.mysql import Database, MySQLManager, NotEncrypted
from managers.redis import RedisManager
from tests.helpers import KAFKA_SSL_PORT, REDIS_TLS_PORT, TLS_DIR, TcpProxy, make_ca, tls_section

TLS_USER = "singleton_tls"  # devstack's: REQUIRE X509, so only TLS with a client certificate gets in
VERIFY_FAILED = "CERTIFICATE_VERIFY_FAILED"
pytestmark = pytest.mark.integration  # devstack's certificates, whether or not a test's fixtures reach a server


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory) -> str:
    return str(make_ca(tmp_path_factory.mktemp("other-ca")))


def mysql_database(config, port: int | None = None, **tls_values) -> Database:
    cfg = {**config["mysql"], "user": TLS_USER, "pool_min": 1, "pool_max": 2, "tls": tls_section(**tls_values)}
    if port is not None:
        cfg["port"] = port
    return Database("tls", cfg, config["reconnect"])


async def first_connection(database: Database) -> None:
    """One attempt of the background connect (the pool and the migrations), raising its failure."""
    try:
        await asyncio.wait_for(database._connect_and_migrate(), 20)
    finally:
        await database.close()


# -- MariaDB ------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_mysql_over_tls_is_encrypted(services, config):
    database = mysql_database(config)
    try:
        await asyncio.wait_for(database._connect_and_migrate(), 20)
        database.ready.set()
        rows = {r["Variable_name"]: r["Value"] for r in await database.fetchall("SHOW SESSION STATUS LIKE 'Ssl_%'")}
        assert rows["Ssl_version"] in ("TLSv1.2", "TLSv1.3")
        assert rows["Ssl_cipher"]
        user = await database.fetchone("SELECT CURRENT_USER() AS user")
        assert user is not None and user["user"].startswith(TLS_USER + "@")
    finally:
        await database.close()


@pytest.mark.gen_test(timeout=60)
async def test_the_tls_user_is_refused_in_plaintext(services, config):
    """What makes config.tls.yaml's MariaDB login a proof of TLS: the server refuses it otherwise."""
    database = mysql_database(config)
    database.ssl = None
    with pytest.raises(pymysql.err.OperationalError) as error:
        await first_connection(database)
    assert error.value.args[0] == 1045  # access denied


@pytest.mark.gen_test(timeout=60)
async def test_mysql_with_another_ca_is_down_and_says_why(services, config, other_ca):
    with pytest.raises(pymysql.err.OperationalError) as error:
        await first_connection(mysql_database(config, ca_file=other_ca))
    assert VERIFY_FAILED in str(error.value)
    assert MySQLManager.is_unavailable(error.value)  # an outage (a dependency down), not a bug


class NoTLSGreeting(TcpProxy):
    """A man in the middle that strips TLS from MariaDB's greeting, as a downgrade attack would:
    aiomysql then carries on in plaintext (the password's challenge answered in the clear)
    unless told not to."""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.target_port), 5)
        header = await up_reader.readexactly(4)
        greeting = bytearray(await up_reader.readexactly(int.from_bytes(header[:3], "little")))
        # protocol version (1), server version (NUL-ended), thread id (4), scramble (8), filler (1),
        # then the low two bytes of the capability flags
        flags_at = greeting.index(0, 1) + 1 + 4 + 8 + 1
        flags = int.from_bytes(greeting[flags_at : flags_at + 2], "little") & ~CLIENT.SSL
        greeting[flags_at : flags_at + 2] = flags.to_bytes(2, "little")
        writer.write(header + bytes(greeting))
        # The client's answer still says it wanted TLS (aiomysql sets the flag when given a
        # context): strip it there too, or the server would wait for a TLS handshake.
        header = await reader.readexactly(4)
        answer = bytearray(await reader.readexactly(int.from_bytes(header[:3], "little")))
        answer[0:4] = (int.from_bytes(answer[0:4], "little") & ~CLIENT.SSL).to_bytes(4, "little")
        up_writer.write(header + bytes(answer))
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)


@pytest.mark.gen_test(timeout=60)
async def test_mysql_refuses_a_server_that_offers_no_tls(services, config):
    proxy = NoTLSGreeting(config["mysql"]["port"])
    await proxy.open()
    # The plaintext user, so that the server itself would let the connection through.
    database = mysql_database(config, port=proxy.port)
    database.cfg = {**database.cfg, "user": config["mysql"]["user"]}
    try:
        with pytest.raises(NotEncrypted):
            await first_connection(database)
    finally:
        await proxy.close()
    assert MySQLManager.is_unavailable(NotEncrypted("x"))


@pytest.mark.gen_test(timeout=60)
async def test_mysql_checks_the_servers_name_unless_told_not_to(services, config):
    """127.0.0.2 reaches the same server, but its certificate names 127.0.0.1 and localhost."""
    proxy = TcpProxy(config["mysql"]["port"], host="127.0.0.2")
    await proxy.open()
    try:
        elsewhere = mysql_database(config, port=proxy.port)
        elsewhere.cfg = {**elsewhere.cfg, "host": "127.0.0.2"}
        with pytest.raises(pymysql.err.OperationalError, match="IP address mismatch"):
            await first_connection(elsewhere)
        unchecked = mysql_database(config, port=proxy.port, verify_hostname=False)
        unchecked.cfg = {**unchecked.cfg, "host": "127.0.0.2"}
        await first_connection(unchecked)
    finally:
        await proxy.close()


# -- Redis --------------------------------------------------------------------------------------


def redis_cfg(config, **tls_values):
    return {**config["redis"], "url": f"rediss://127.0.0.1:{REDIS_TLS_PORT}/15", "tls": tls_section(**tls_values)}


@pytest.mark.gen_test(timeout=30)
async def test_redis_over_tls(services, config):
    client = redis_manager.client(redis_cfg(config))
    try:
        info = await asyncio.wait_for(client.client_info(), 5)
        assert info["laddr"] == f"127.0.0.1:{REDIS_TLS_PORT}"  # its TLS port, which speaks nothing else
    finally:
        await client.aclose()


@pytest.mark.gen_test(timeout=30)
async def test_redis_with_another_ca_or_no_client_certificate_is_down(services, config, other_ca):
    for cfg, reason in (
        (redis_cfg(config, ca_file=other_ca), VERIFY_FAILED),
        (redis_cfg(config, cert_file="", key_file=""), "Connection"),  # the server asks for one
    ):
        client = redis_manager.client(cfg)
        try:
            with pytest.raises(Exception) as error:
                await asyncio.wait_for(client.ping(), 5)
        finally:
            await client.aclose()
        assert reason in f"{type(error.value).__name__}: {error.value}"
        assert RedisManager.is_unavailable(error.value)


@pytest.mark.gen_test(timeout=30)
async def test_redis_checks_the_servers_name_unless_told_not_to(services, config):
    proxy = TcpProxy(REDIS_TLS_PORT, host="127.0.0.2")
    await proxy.open()
    try:
        for verify, fails in ((True, True), (False, False)):
            cfg = {**redis_cfg(config, verify_hostname=verify), "url": f"rediss://127.0.0.2:{proxy.port}/15"}
            client = redis_manager.client(cfg)
            try:
                if fails:
                    with pytest.raises(Exception, match="IP address mismatch"):
                        await asyncio.wait_for(client.ping(), 5)
                else:
                    assert await asyncio.wait_for(client.ping(), 5)
            finally:
                await client.aclose()
    finally:
        await proxy.close()


# -- Kafka --------------------------------------------------------------------------------------


def kafka_cfg(config, **tls_values):
    return {**config["kafka"], "bootstrap_servers": f"127.0.0.1:{KAFKA_SSL_PORT}", "tls": tls_section(**tls_values)}


@pytest.mark.gen_test(timeout=60)
async def test_kafka_over_ssl(services, config):
    producer = KafkaProducerManager(kafka_cfg(config))
    try:
        await producer.ping()  # metadata from the SSL listener, the topic in it
        await producer.send(b'{"type": "tls_test"}')
    finally:
        await producer.release()


@pytest.mark.gen_test(timeout=60)
async def test_kafka_with_another_ca_is_down(services, config, other_ca, caplog):
    producer = KafkaProducerManager(kafka_cfg(config, ca_file=other_ca))
    try:
        with pytest.raises(Exception) as error:
            await producer.ping()
    finally:
        await producer.release()
    assert KafkaProducerManager.is_unavailable(error.value)
    assert any(VERIFY_FAILED in record.getMessage() for record in caplog.records)  # aiokafka's own line says why


def test_a_certificate_and_a_key_that_do_not_match_or_an_encrypted_key_stop_the_start(tmp_path):
    mismatched = tls_section(cert_file=str(TLS_DIR / "server.pem"))  # with the client's key
    with pytest.raises(tls.TLSError, match="not a PEM certificate and its unencrypted private key"):
        tls.client_context(mismatched)
    encrypted = tmp_path / "client-encrypted.key"
    subprocess.run(
        ["openssl", "pkey", "-in", str(TLS_DIR / "client.key"), "-aes256", "-passout", "pass:x"]
        + ["-out", str(encrypted)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    with pytest.raises(tls.TLSError, match="the key is encrypted"):
        tls.client_context(tls_section(key_file=str(encrypted)))
    context = tls.client_context(tls_section())
    assert isinstance(context, ssl.SSLContext)
