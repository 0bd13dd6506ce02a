"""ConfigManager: config.yaml, environment overrides, JSON Schema validation, secrets.

A secret (``SECRETS``) is never YAML-parsed from the environment, never echoed in
an error, and may come from the file its ``<key>_file`` names when the key itself
is empty. Relative paths in the file are relative to the file's own directory.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, NotRequired, TypedDict, cast, overload

import jsonschema
import yaml

from managers import tls
from managers.base import Manager
from managers.shards import ShardMap, ShardMapError
from managers.tls import TLSConfig

ENV_PREFIX = "SINGLETON_"
DEFAULT_PATH = Path(__file__).resolve().parent.parent / "config.yaml"


def _obj(properties: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": properties,
        "required": list(properties) if required else [],
    }


_int = {"type": "integer", "minimum": 0}
_pos = {"type": "number", "exclusiveMinimum": 0}
_port = {"type": "integer", "minimum": 1, "maximum": 65535}
_str = {"type": "string", "minLength": 1}
_strs = {"type": "array", "items": {"type": "string"}}
_host_port = {"type": "string", "pattern": r"^[^\s:/@]+:[0-9]{1,5}$"}
_path = {"type": "string"}  # relative to the config file's directory; "" for none
# TLS to a backing service (managers/tls.py): no ca_file, plaintext.
_tls = _obj({"ca_file": _path, "cert_file": _path, "key_file": _path, "verify_hostname": {"type": "boolean"}})
TLS_SECTIONS = ("mysql", "redis", "kafka")

# (section, key): values that must never appear in an error or a log line. The
# URLs may carry credentials, so they are redacted from errors too.
SECRETS = {("mysql", "password"), ("mysql", "migrate_password"), ("auth", "token_secret")}
SENSITIVE = SECRETS | {("redis", "url"), ("mongodb", "uri")}
PATHS = {
    ("mysql", "password_file"),
    ("mysql", "migrate_password_file"),
    ("auth", "token_secret_file"),
    ("auth", "bootstrap_admin_key_file"),
}

SCHEMA: dict[str, Any] = _obj(
    {
        "server": _obj(
            {
                "host": _str,
                "port": {"type": "integer", "minimum": 0, "maximum": 65535},
                "processes": {"type": "integer", "minimum": 1, "maximum": 64},
                "event_loop": {"enum": ["uvloop", "asyncio"]},
                "max_body_bytes": {"type": "integer", "minimum": 1},
                "max_header_bytes": {"type": "integer", "minimum": 1024},
                "idle_connection_timeout_s": _pos,
                "body_timeout_s": _pos,
                "shutdown_timeout_s": _pos,
                "health_probe_interval_s": _pos,
                "health_check_timeout_s": _pos,
            }
        ),
        "mysql": _obj(
            {
                "host": _str,
                "port": _port,
                "user": _str,
                "password": {"type": "string"},
                "password_file": _path,
                "migrate_user": {"type": "string"},  # "": this process never migrates (python -m service migrate)
                "migrate_password": {"type": "string"},
                "migrate_password_file": _path,
                "database": {"type": "string", "pattern": "^[A-Za-z0-9_]+$"},
                "pool_min": _int,
                "pool_max": {"type": "integer", "minimum": 1},
                "connect_timeout_s": _pos,
                "query_timeout_s": _pos,
                "pool_recycle_s": {"type": "integer", "minimum": -1},
                "tls": _tls,
            }
        ),
        "mongodb": _obj({"uri": _str, "database": _str, "timeout_ms": {"type": "integer", "minimum": 1}}),
        "redis": _obj(
            {
                "url": _str,
                "cluster_nodes": {"type": "array", "items": _host_port, "uniqueItems": True},
                "socket_timeout_s": _pos,
                "connect_timeout_s": _pos,
                "cache_ttl_s": {"type": "integer", "minimum": 1},
                "tls": _tls,
            }
        ),
        "payments": _obj(
            {
                "max_amount": {"type": "integer", "minimum": 1, "maximum": 10**15},
                "idempotency_ttl_hours": _pos,
            }
        ),
        "outbox": _obj(
            {
                "batch_size": {"type": "integer", "minimum": 1, "maximum": 10000},
                "poll_interval_s": _pos,
                "retention_hours": _pos,
            }
        ),
        "kafka": _obj(
            {
                "bootstrap_servers": _str,
                "topic": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,249}$"},
                "client_id": _str,
                "analytics_group": _str,
                "request_timeout_s": _pos,
                "health_event_interval_s": _pos,
                "tls": _tls,
            }
        ),
        "websocket": _obj(
            {
                "max_connections": {"type": "integer", "minimum": 1},
                "max_per_user": {"type": "integer", "minimum": 1},
                "max_per_ip": {"type": "integer", "minimum": 1},
                "max_message_bytes": {"type": "integer", "minimum": 1},
                "ping_interval_s": _pos,
                "ping_timeout_s": _pos,
                "max_pending_bytes": {"type": "integer", "minimum": 1},
                "replay_max_events": {"type": "integer", "minimum": 1},
                "token_expiry_grace_s": {"type": "number", "minimum": 0, "maximum": 300},
                "revocation_poll_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 4},
            }
        ),
        "logging": _obj(
            {
                "level": {"enum": ["DEBUG", "INFO", "WARNING", "ERROR"]},
                "file": {"type": "string"},
                "max_bytes": {"type": "integer", "minimum": 1024},
                "backups": _int,
            }
        ),
        "cors": _obj({"allowed_origins": _strs, "allowed_methods": _strs, "allowed_headers": _strs}),
        "auth": _obj(
            {
                "key_cache_ttl_s": {"type": "number", "minimum": 0, "maximum": 5},
                "bootstrap_admin_key_file": _path,
                "token_secret": {"type": "string"},
                "token_secret_file": _path,
                "token_ttl_s": {"type": "integer", "minimum": 1, "maximum": 300},
            }
        ),
        "rate_limit": _obj(
            {
                "enabled": {"type": "boolean"},
                "read_per_s": _pos,
                "read_burst": {"type": "integer", "minimum": 1},
                "write_per_s": _pos,
                "write_burst": {"type": "integer", "minimum": 1},
                "anonymous_per_s": _pos,
                "anonymous_burst": {"type": "integer", "minimum": 1},
                "redis_down": {"enum": ["local", "closed"]},
            }
        ),
        "metrics": _obj({"host": _str, "port": {"type": "integer", "minimum": 0, "maximum": 65535}}),
        "reconnect": _obj({"initial_delay_s": _pos, "max_delay_s": _pos}),
        "users": _obj({"email_claim_lease_s": _pos}),
        # Optional: MariaDB sharded by user (managers/shards.py). Each physical shard shares
        # the `mysql` section's settings but for its address and the logical shards it holds.
        "shards": _obj(
            {
                "global": _str,
                "physical": {
                    "type": "object",
                    "minProperties": 1,
                    "propertyNames": {"pattern": "^[a-z][a-z0-9_]{0,31}$"},
                    "additionalProperties": _obj(
                        {"host": _str, "port": _port, "logical": {"type": "string"}, "database": _str},
                        required=False,
                    )
                    | {"required": ["host", "port", "logical"]},
                },
                "map_refresh_s": _pos,
            },
            required=False,
        )
        | {"required": ["global", "physical"]},
    }
)
SCHEMA["required"].remove("shards")


# The validated configuration, section by section: what SCHEMA guarantees once load()
# returns (tests/managers/test_config_types.py keeps the two in step). Code reads
# config["server"]["port"], and the type checker knows every key and its type.
class ServerConfig(TypedDict):
    host: str
    port: int
    processes: int
    event_loop: Literal["uvloop", "asyncio"]
    max_body_bytes: int
    max_header_bytes: int
    idle_connection_timeout_s: float
    body_timeout_s: float
    shutdown_timeout_s: float
    health_probe_interval_s: float
    health_check_timeout_s: float


class MySQLConfig(TypedDict):
    host: str
    port: int
    user: str
    password: str
    password_file: str
    migrate_user: str
    migrate_password: str
    migrate_password_file: str
    database: str
    pool_min: int
    pool_max: int
    connect_timeout_s: float
    query_timeout_s: float
    pool_recycle_s: int
    tls: TLSConfig


class MongoConfig(TypedDict):
    uri: str
    database: str
    timeout_ms: int


class RedisConfig(TypedDict):
    url: str
    cluster_nodes: list[str]
    socket_timeout_s: float
    connect_timeout_s: float
    cache_ttl_s: int
    tls: TLSConfig


class PaymentsConfig(TypedDict):
    max_amount: int
    idempotency_ttl_hours: float


class OutboxConfig(TypedDict):
    batch_size: int
    poll_interval_s: float
    retention_hours: float


class KafkaConfig(TypedDict):
    bootstrap_servers: str
    topic: str
    client_id: str
    analytics_group: str
    request_timeout_s: float
    health_event_interval_s: float
    tls: TLSConfig


class WebSocketConfig(TypedDict):
    max_connections: int
    max_per_user: int
    max_per_ip: int
    max_message_bytes: int
    ping_interval_s: float
    ping_timeout_s: float
    max_pending_bytes: int
    replay_max_events: int
    token_expiry_grace_s: float
    revocation_poll_s: float


class LoggingConfig(TypedDict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"]
    file: str
    max_bytes: int
    backups: int


class CorsConfig(TypedDict):
    allowed_origins: list[str]
    allowed_methods: list[str]
    allowed_headers: list[str]


class AuthConfig(TypedDict):
    key_cache_ttl_s: float
    bootstrap_admin_key_file: str
    token_secret: str
    token_secret_file: str
    token_ttl_s: int


class RateLimitConfig(TypedDict):
    enabled: bool
    read_per_s: float
    read_burst: int
    write_per_s: float
    write_burst: int
    anonymous_per_s: float
    anonymous_burst: int
    redis_down: Literal["local", "closed"]


class MetricsConfig(TypedDict):
    host: str
    port: int


class ReconnectConfig(TypedDict):
    initial_delay_s: float
    max_delay_s: float


class UsersConfig(TypedDict):
    email_claim_lease_s: float


# Optional keys by total=False, as NotRequired in a class body is a string under `from
# __future__ import annotations`, which TypedDict cannot read (Python 3.11).
class _PhysicalShardRequired(TypedDict):
    host: str
    port: int
    logical: str  # the logical shards it holds: "0-511", "0-99, 200", or "" (none yet)


class PhysicalShardConfig(_PhysicalShardRequired, total=False):
    database: str


# "global" is a keyword: the functional form.
ShardsConfig = TypedDict(
    "ShardsConfig",
    {"global": str, "physical": dict[str, PhysicalShardConfig], "map_refresh_s": NotRequired[float]},
)


class _RequiredSections(TypedDict):
    server: ServerConfig
    mysql: MySQLConfig
    mongodb: MongoConfig
    redis: RedisConfig
    payments: PaymentsConfig
    outbox: OutboxConfig
    kafka: KafkaConfig
    websocket: WebSocketConfig
    logging: LoggingConfig
    cors: CorsConfig
    auth: AuthConfig
    rate_limit: RateLimitConfig
    metrics: MetricsConfig
    reconnect: ReconnectConfig
    users: UsersConfig


class Config(_RequiredSections, total=False):
    shards: ShardsConfig  # optional: MariaDB sharded by user


Section = Literal[
    "server",
    "mysql",
    "mongodb",
    "redis",
    "payments",
    "outbox",
    "kafka",
    "websocket",
    "logging",
    "cors",
    "auth",
    "rate_limit",
    "metrics",
    "reconnect",
    "users",
]


class ConfigError(ValueError):
    """The configuration is unusable; the message names the offending key."""


def _apply_env(data: dict[str, Any], env: Mapping[str, str]) -> None:
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("__")
        if not section or not key:
            continue
        if (section, key) in SECRETS:  # taken as it is: "123" stays a string, and no parse error echoes it
            data.setdefault(section, {})[key] = raw
            continue
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"{section}.{key} (from {name}): not a YAML value: {exc}") from None
        key, _, sub = key.partition("__")  # SINGLETON_MYSQL__TLS__CA_FILE: one key of mysql.tls
        if sub:
            value = {sub: value}
        _merge_section(data.setdefault(section, {}), {key: value})


def as_env(overrides: Mapping[str, Mapping[str, Any]], base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a child ``python -m service``: ``base`` (default: this process's)
    with each override as its ``SINGLETON_<SECTION>__<KEY>`` variable, written so that
    ``load`` reads back exactly that value (JSON is YAML; a secret is taken as it is)."""
    env = dict(os.environ if base is None else base)
    for section, values in overrides.items():
        for key, value in values.items():
            raw = value if (section, key) in SECRETS else json.dumps(value)
            env[f"{ENV_PREFIX}{section.upper()}__{key.upper()}"] = str(raw)
    return env


def _merge(data: dict[str, Any], overrides: Mapping[str, Mapping[str, Any]]) -> None:
    for section, values in overrides.items():
        _merge_section(data.setdefault(section, {}), values)


def _merge_section(section: dict[str, Any], values: Mapping[str, Any]) -> None:
    """``values`` on top of ``section``, key by key; a mapping (``tls``) key by key too."""
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(section.get(key), dict):
            section[key] = {**section[key], **value}
        else:
            section[key] = value


def load(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Config:
    """Read, override and validate a configuration; raise ConfigError naming the bad key."""
    path = Path(path or DEFAULT_PATH)
    data = _read(path)
    _apply_env(data, os.environ if env is None else env)
    _merge(data, overrides or {})
    _refuse_removed(data)
    errors = sorted(jsonschema.Draft202012Validator(SCHEMA).iter_errors(data), key=lambda e: list(e.path))
    if errors:
        raise ConfigError("; ".join(_describe(e) for e in errors))
    _check_shards(data)
    _resolve(data, path.resolve().parent)
    _check_tls(data)
    return cast(Config, data)  # what SCHEMA has just validated


# Settings that no longer exist, and why: a start that names one fails, saying so.
REMOVED = {
    ("auth", "enabled"): "API keys are always checked: no configuration or environment turns them off "
    "(only the bench measures the service without them, through its own entry point)",
    ("rate_limit", "fail_open"): "with Redis out of reach the limiter now uses per-process buckets; "
    "set rate_limit.redis_down (local or closed) instead",
}


def _refuse_removed(data: dict[str, Any]) -> None:
    for (section, key), why in REMOVED.items():
        values = data.get(section)
        if isinstance(values, dict) and key in values:
            variable = f"{ENV_PREFIX}{section.upper()}__{key.upper()}"
            raise ConfigError(f"{section}.{key} (or {variable}) is not a setting any more: {why}")


def _read(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The file's mapping; with ``extends: <file>``, that file's (read the same way) with
    this one's sections on top, key by key (a section's ``tls`` too; ``shards`` as a whole)."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    data = copy.deepcopy(data)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str) or not parent:
        raise ConfigError(f"{path}: extends must name a file")
    base_path = (path.parent / parent).resolve()
    if base_path in seen:
        raise ConfigError(f"{path}: extends {parent}, which extends it back")
    base = _read(base_path, (*seen, path.resolve()))
    for section, values in data.items():
        if isinstance(values, dict) and isinstance(base.get(section), dict) and section != "shards":
            _merge_section(base[section], values)
        else:
            base[section] = values
    return base


def _check_shards(data: dict[str, Any]) -> None:
    """What the schema cannot say of a shard map: every logical shard on exactly one
    physical shard, and the global home among them."""
    shards = data.get("shards")
    if shards is None:
        return
    try:
        ShardMap({name: physical["logical"] for name, physical in shards["physical"].items()})
    except ShardMapError as exc:
        raise ConfigError(f"shards.physical: {exc}") from None
    if shards["global"] not in shards["physical"]:
        raise ConfigError(f"shards.global: {shards['global']!r} is not one of shards.physical")


def _resolve(data: dict[str, Any], base: Path) -> None:
    """Make paths absolute, and fill each empty secret from its file."""
    for section, key in PATHS:
        if data[section][key]:
            data[section][key] = str(base / data[section][key])
    for section in TLS_SECTIONS:
        files = data[section]["tls"]
        for key in ("ca_file", "cert_file", "key_file"):
            if files[key]:
                files[key] = str(base / files[key])
    for section, key in SECRETS:
        file = data[section][f"{key}_file"]
        if data[section][key] or not file:
            continue
        if (section, key) == ("mysql", "migrate_password") and not data["mysql"]["migrate_user"]:
            continue  # no migration user: this process never migrates
        try:
            data[section][key] = Path(file).read_text().strip()
        except OSError as exc:
            raise ConfigError(
                f"{section}.{key} is empty and {section}.{key}_file cannot be read ({file}: {exc.strerror}); "
                f"set SINGLETON_{section.upper()}__{key.upper()}, or run `make services` for the dev secrets"
            ) from None
        if not data[section][key]:
            raise ConfigError(f"{section}.{key} is empty and so is {file}")


def _check_tls(data: dict[str, Any]) -> None:
    """Each service's TLS context built once (its files read, the key matched to its
    certificate), and a Redis URL that says what ``redis.tls`` says."""
    for section in TLS_SECTIONS:
        try:
            tls.client_context(data[section]["tls"])
        except tls.TLSError as exc:
            raise ConfigError(f"{section}.tls: {exc}") from None
    url = data["redis"]["url"]
    secure_url = url.startswith("rediss://")
    if "ssl_" in url.partition("?")[2]:
        raise ConfigError("redis.url: TLS settings go in redis.tls, not in the URL's query")
    if tls.enabled(data["redis"]["tls"]) and not secure_url:
        raise ConfigError("redis.tls.ca_file is set: redis.url must start with rediss://")
    if secure_url and not tls.enabled(data["redis"]["tls"]):
        raise ConfigError("redis.url starts with rediss://: set redis.tls.ca_file (the CA of the server's certificate)")


def _describe(error: jsonschema.ValidationError) -> str:
    path = tuple(str(p) for p in error.absolute_path)
    where = ".".join(path) or "<top level>"
    if path[:2] in SENSITIVE:
        return f"{where}: invalid value (not shown: it may hold a secret)"
    return f"{where}: {error.message}"


class ConfigManager(Manager):
    """Holds the validated configuration; sections are plain dicts."""

    def __init__(self, data: Config):
        self.data = data

    @classmethod
    def start(cls, config: Config) -> ConfigManager:
        return cls._install(cls(config))

    # config["server"] is a ServerConfig, and so on: one signature per section.
    @overload
    def __getitem__(self, section: Literal["server"]) -> ServerConfig: ...
    @overload
    def __getitem__(self, section: Literal["mysql"]) -> MySQLConfig: ...
    @overload
    def __getitem__(self, section: Literal["mongodb"]) -> MongoConfig: ...
    @overload
    def __getitem__(self, section: Literal["redis"]) -> RedisConfig: ...
    @overload
    def __getitem__(self, section: Literal["payments"]) -> PaymentsConfig: ...
    @overload
    def __getitem__(self, section: Literal["outbox"]) -> OutboxConfig: ...
    @overload
    def __getitem__(self, section: Literal["kafka"]) -> KafkaConfig: ...
    @overload
    def __getitem__(self, section: Literal["websocket"]) -> WebSocketConfig: ...
    @overload
    def __getitem__(self, section: Literal["logging"]) -> LoggingConfig: ...
    @overload
    def __getitem__(self, section: Literal["cors"]) -> CorsConfig: ...
    @overload
    def __getitem__(self, section: Literal["auth"]) -> AuthConfig: ...
    @overload
    def __getitem__(self, section: Literal["rate_limit"]) -> RateLimitConfig: ...
    @overload
    def __getitem__(self, section: Literal["metrics"]) -> MetricsConfig: ...
    @overload
    def __getitem__(self, section: Literal["reconnect"]) -> ReconnectConfig: ...
    @overload
    def __getitem__(self, section: Literal["users"]) -> UsersConfig: ...
    def __getitem__(self, section: Section) -> object:
        return self.data[section]
