"""TLS settings: the ``tls`` sections as config.load reads and checks them, the context they
make and what each client is given. No server, no tool: the certificates connected to for
real are devstack's (tests/managers/test_tls_connections.py, tests/service/test_tls.py)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import SSLConnection

from managers import config as config_module
from managers import redis as redis_manager
from managers import tls
from managers.config import DEFAULT_PATH, ConfigError
from managers.kafka_producer import KafkaProducerManager
from tests.helpers import UNIT_SECRETS

# A CA's certificate (public; its key was discarded when it was made): a valid ca_file.
CA_PEM = """-----BEGIN CERTIFICATE-----
MIIByDCCAW+gAwIBAgIUW/2HEbxUUITHna/JBk0bZOz/mowwCgYIKoZIzj0EAwIw
OTE3MDUGA1UEAwwuc2luZ2xldG9uIHVuaXQtdGllciBDQSAoaXRzIGtleSB3YXMg
ZGlzY2FyZGVkKTAgFw0yNjEyMDUxNDE5MjJaGA8yMTI2MTExMTE0MTkyMlowOTE3
MDUGA1UEAwwuc2luZ2xldG9uIHVuaXQtdGllciBDQSAoaXRzIGtleSB3YXMgZGlz
Y2FyZGVkKTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABACJxaoYRrVeMhy34oro
ggdqHuxdQo6BRUVBVtiyb8cOH3Gttc4FYLOviBncejkho/C7wqdsorpYpY1V/cww
rXajUzBRMB0GA1UdDgQWBBRs2/FIiy5pgeyLGaTfj+CUw3ulTzAfBgNVHSMEGDAW
gBRs2/FIiy5pgeyLGaTfj+CUw3ulTzAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49
BAMCA0cAMEQCICKcFKUXAbTidQ5PU3plm+ElfPTxFPE1+330KvuDHBVpAiAgW9V2
uCUs00FfbnbWZvNr42KdIuGZcb2mCEzJIyQmpA==
-----END CERTIFICATE-----
"""
PLAINTEXT: tls.TLSConfig = {"ca_file": "", "cert_file": "", "key_file": "", "verify_hostname": True}


@pytest.fixture
def ca_file(tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    path.write_text(CA_PEM)
    return str(path)


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> config_module.Config:
    """A config file in ``tmp_path`` on top of the repository's, read with no environment
    but ``env`` (and the unit tier's stand-in secrets)."""
    path = tmp_path / "config.yaml"
    path.write_text(f"extends: {DEFAULT_PATH}\n{text}")
    return config_module.load(path, env=env or {}, overrides=UNIT_SECRETS)


def test_no_ca_file_is_plaintext_for_every_client(unit_config):
    for section in ("mysql", "redis", "kafka"):
        assert unit_config[section]["tls"] == PLAINTEXT  # config.yaml's default
    assert tls.client_context(PLAINTEXT) is None
    assert tls.redis_options(PLAINTEXT) == {} and tls.kafka_options(PLAINTEXT) == {}
    client = redis_manager.client(unit_config["redis"])
    assert client.connection_pool.connection_class is not SSLConnection


def test_a_ca_file_makes_a_context_that_verifies_the_server_and_its_name(ca_file):
    context = tls.client_context({**PLAINTEXT, "ca_file": ca_file})
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert [ca["subject"] for ca in context.get_ca_certs()] == [
        ((("commonName", "singleton unit-tier CA (its key was discarded)"),),)
    ]
    unchecked = tls.client_context({**PLAINTEXT, "ca_file": ca_file, "verify_hostname": False})
    assert unchecked is not None and unchecked.check_hostname is False
    assert unchecked.verify_mode == ssl.CERT_REQUIRED  # the certificate itself still is


def test_the_files_are_relative_to_the_config_file_and_the_other_keys_inherited(tmp_path, ca_file):
    config = load(tmp_path, "mysql:\n  tls: {ca_file: ca.pem}\n")
    assert config["mysql"]["tls"] == {**PLAINTEXT, "ca_file": ca_file}
    assert config["redis"]["tls"] == PLAINTEXT


def test_one_key_of_tls_from_the_environment(tmp_path, ca_file):
    config = load(tmp_path, "", env={"SINGLETON_KAFKA__TLS__CA_FILE": ca_file})
    assert config["kafka"]["tls"] == {**PLAINTEXT, "ca_file": ca_file}
    whole = config_module.as_env({"kafka": {"tls": {**PLAINTEXT, "ca_file": ca_file}}}, base={})
    assert load(tmp_path, "", env=whole)["kafka"]["tls"]["ca_file"] == ca_file


@pytest.mark.parametrize(
    ("tls_yaml", "files", "message"),
    [
        ("{ca_file: missing.pem}", {}, "mysql.tls: ca_file {dir}/missing.pem: No such file or directory"),
        ("{ca_file: ca.pem}", {"ca.pem": "not a certificate\n"}, "mysql.tls: ca_file {dir}/ca.pem: not a PEM"),
        ("{ca_file: ca.pem, cert_file: client.pem}", {"ca.pem": CA_PEM}, "cert_file and key_file go together"),
        (
            "{ca_file: ca.pem, cert_file: client.pem, key_file: client.key}",
            {"ca.pem": CA_PEM, "client.key": "x"},
            "mysql.tls: cert_file {dir}/client.pem: No such file or directory",
        ),
        (
            "{ca_file: ca.pem, cert_file: ca.pem, key_file: client.key}",
            {"ca.pem": CA_PEM, "client.key": "not a key\n"},
            "not a PEM certificate and its unencrypted private key",
        ),
        ("{ca_file: ca.pem, verify_hostname: maybe}", {}, "mysql.tls.verify_hostname: 'maybe' is not of type"),
        ("{ca_file: ca.pem, key: inline}", {}, "mysql.tls: Additional properties are not allowed ('key' was"),
    ],
)
def test_a_tls_section_that_cannot_work_stops_the_start_naming_it(tmp_path, tls_yaml, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError) as error:
        load(tmp_path, f"mysql:\n  tls: {tls_yaml}\n")
    assert message.format(dir=tmp_path) in str(error.value)


def test_redis_url_says_what_redis_tls_says(tmp_path, ca_file):
    with pytest.raises(ConfigError, match="redis.url must start with rediss://"):
        load(tmp_path, "redis:\n  tls: {ca_file: ca.pem}\n")
    with pytest.raises(ConfigError, match=r"set redis.tls.ca_file") as error:
        load(tmp_path, "redis:\n  url: rediss://app:s3cret@cache:6380/0\n")
    assert "s3cret" not in str(error.value)
    with pytest.raises(ConfigError, match="TLS settings go in redis.tls"):
        load(tmp_path, "redis:\n  url: rediss://cache:6380/0?ssl_cert_reqs=none\n  tls: {ca_file: ca.pem}\n")


def test_redis_gets_the_files_and_checks_for_one_server_and_a_cluster(tmp_path, ca_file):
    config = load(tmp_path, "redis:\n  url: rediss://cache:6380/0\n  tls: {ca_file: ca.pem, verify_hostname: false}\n")
    one = redis_manager.client(config["redis"])
    assert isinstance(one, aioredis.Redis)
    assert one.connection_pool.connection_class is SSLConnection
    kwargs = one.connection_pool.connection_kwargs
    assert kwargs["ssl_ca_certs"] == ca_file and kwargs["ssl_cert_reqs"] == "required"
    assert kwargs["ssl_check_hostname"] is False and kwargs["ssl_min_version"] == ssl.TLSVersion.TLSv1_2
    cluster = redis_manager.client({**config["redis"], "cluster_nodes": ["cache-1:6380", "cache-2:6380"]})
    assert isinstance(cluster, RedisCluster)
    kwargs = cluster.nodes_manager.connection_kwargs
    assert kwargs["connection_class"] is SSLConnection
    assert kwargs["ssl_ca_certs"] == ca_file and kwargs["ssl_cert_reqs"] == "required"


def test_kafka_clients_get_ssl_and_the_context(tmp_path, ca_file):
    config = load(tmp_path, "kafka:\n  tls: {ca_file: ca.pem}\n")
    options = KafkaProducerManager(config["kafka"]).tls_options
    assert options["security_protocol"] == "SSL"
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    assert options["ssl_context"].verify_mode == ssl.CERT_REQUIRED
