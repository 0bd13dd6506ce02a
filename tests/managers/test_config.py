"""Config: defaults, environment overrides, and validation that names the bad key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from managers import config as config_module
from managers.config import ConfigError, ConfigManager
from tests.helpers import UNIT_SECRETS

# The secrets as the environment gives them: the repository's config reads them from
# .devstack/secrets otherwise, which only `make services` writes.
SECRETS = {
    f"SINGLETON_{section.upper()}__{key.upper()}": value
    for section, values in UNIT_SECRETS.items()
    for key, value in values.items()
}


def test_repository_config_is_valid():
    cfg = config_module.load(env=SECRETS)
    assert cfg["kafka"]["topic"] == "singleton-events"
    assert cfg["server"]["port"] == 8080


def test_environment_overrides_are_typed():
    cfg = config_module.load(env={**SECRETS, "SINGLETON_SERVER__PORT": "9090", "SINGLETON_MYSQL__HOST": "db.internal"})
    assert cfg["server"]["port"] == 9090
    assert cfg["mysql"]["host"] == "db.internal"


def test_explicit_overrides_beat_environment():
    cfg = config_module.load(env={**SECRETS, "SINGLETON_SERVER__PORT": "9090"}, overrides={"server": {"port": 7070}})
    assert cfg["server"]["port"] == 7070


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match=r"mysql\.port: 'abc' is not of type 'integer'"):
        config_module.load(env={"SINGLETON_MYSQL__PORT": "abc"})


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"redis: Additional properties are not allowed \('urll' was unexpected\)"):
        config_module.load(env={"SINGLETON_REDIS__URLL": "redis://x"})


def test_missing_key_is_named(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("server: {host: 127.0.0.1}\n")
    with pytest.raises(ConfigError, match=r"server: 'port' is a required property"):
        config_module.load(path, env={})


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        config_module.load(tmp_path / "missing.yaml", env={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("server: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        config_module.load(bad, env={})


def test_config_manager_holds_sections():
    cfg = config_module.load(env=SECRETS)
    assert ConfigManager(cfg)["redis"] is cfg["redis"]


def test_a_secret_from_the_environment_is_taken_as_it_is():
    env = {
        "SINGLETON_MYSQL__PASSWORD": "123",
        "SINGLETON_MYSQL__MIGRATE_PASSWORD": "0x1",
        "SINGLETON_AUTH__TOKEN_SECRET": "a: [b",
    }
    cfg = config_module.load(env=env)
    assert cfg["mysql"]["password"] == "123"
    assert cfg["mysql"]["migrate_password"] == "0x1"
    assert cfg["auth"]["token_secret"] == "a: [b"


def repository_config(tmp_path, **changes) -> Path:
    """A copy of config.yaml in ``tmp_path`` with some keys replaced."""
    data = yaml.safe_load(config_module.DEFAULT_PATH.read_text())
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        data[section][key] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_an_invalid_secret_is_named_but_never_shown(tmp_path):
    path = repository_config(tmp_path, mysql__password=987654321, redis__url=["redis://:hunter2@db:6379/0"])
    with pytest.raises(ConfigError) as caught:
        config_module.load(path, env={})
    message = str(caught.value)
    assert "mysql.password: invalid value" in message and "redis.url: invalid value" in message
    assert "987654321" not in message and "hunter2" not in message


def test_an_empty_secret_is_read_from_its_file_relative_to_the_config(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "db").write_text("from-the-file\n")
    path = repository_config(
        tmp_path,
        mysql__password="",
        mysql__password_file="s/db",
        mysql__migrate_password="m",
        auth__token_secret="t" * 32,
    )
    assert config_module.load(path, env={})["mysql"]["password"] == "from-the-file"


def test_without_a_migration_user_its_password_is_not_needed(tmp_path):
    """A process that never migrates (``mysql.migrate_user`` empty) holds no migration secret."""
    path = repository_config(
        tmp_path,
        mysql__password="p",
        mysql__migrate_user="",
        mysql__migrate_password_file="nowhere",
        auth__token_secret="t",
    )
    assert config_module.load(path, env={})["mysql"]["migrate_password"] == ""
    path = repository_config(
        tmp_path, mysql__password="p", mysql__migrate_password_file="nowhere", auth__token_secret="t"
    )
    with pytest.raises(ConfigError, match=r"mysql\.migrate_password is empty"):
        config_module.load(path, env={})


def test_a_missing_secret_file_names_the_key_and_how_to_make_it(tmp_path):
    path = repository_config(
        tmp_path,
        mysql__password="",
        mysql__password_file="nowhere/db",
        mysql__migrate_password="m",
        auth__token_secret="t",
    )
    with pytest.raises(
        ConfigError, match=r"mysql\.password is empty and mysql\.password_file cannot be read"
    ) as caught:
        config_module.load(path, env={})
    assert "SINGLETON_MYSQL__PASSWORD" in str(caught.value) and "make services" in str(caught.value)


def test_the_shipped_config_holds_no_secret():
    data = yaml.safe_load(config_module.DEFAULT_PATH.read_text())
    for section, key in config_module.SECRETS:
        assert data[section][key] == "", f"{section}.{key} must come from the environment or its file"
    assert data["rate_limit"]["enabled"] is True and "enabled" not in data["auth"]


def test_the_shipped_config_mints_no_admin_key():
    """Only `make run` (the dev stack) asks for one, through the environment."""
    data = yaml.safe_load(config_module.DEFAULT_PATH.read_text())
    assert data["auth"]["bootstrap_admin_key_file"] == ""
    assert config_module.load(env={}, overrides=UNIT_SECRETS)["auth"]["bootstrap_admin_key_file"] == ""
    makefile = (config_module.DEFAULT_PATH.parent / "Makefile").read_text()
    assert "SINGLETON_AUTH__BOOTSTRAP_ADMIN_KEY_FILE=$(CURDIR)/.devstack/admin.key $(PY) -m service\n" in makefile


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"SINGLETON_AUTH__ENABLED": "false"}, "auth.enabled"),
        ({"SINGLETON_AUTH__ENABLED": "true"}, "auth.enabled"),
        ({"SINGLETON_RATE_LIMIT__FAIL_OPEN": "true"}, "rate_limit.fail_open"),
    ],
)
def test_a_removed_setting_fails_the_start_saying_why(env, named):
    with pytest.raises(ConfigError, match="is not a setting any more") as caught:
        config_module.load(env=env, overrides=UNIT_SECRETS)
    assert str(caught.value).startswith(named)


def test_auth_cannot_be_turned_off_from_a_config_file(tmp_path):
    path = repository_config(tmp_path, auth__enabled=False)
    with pytest.raises(ConfigError, match=r"^auth\.enabled \(or SINGLETON_AUTH__ENABLED\) is not a setting any more"):
        config_module.load(path, env={}, overrides=UNIT_SECRETS)


def test_as_env_is_read_back_exactly_as_written():
    """A child process's environment (tests, bench, chaos all build theirs with it): values
    that YAML would retype if written bare come back as they went in."""
    overrides = {
        "kafka": {"client_id": "123", "topic": "true"},
        "auth": {"token_secret": "0123", "bootstrap_admin_key_file": ""},
        "mysql": {"password": "null", "migrate_password": "true", "port": 3307},
        "rate_limit": {"redis_down": "closed", "read_per_s": 2.5},
        "cors": {"allowed_origins": ["http://a.example", "*"]},
    }
    env = config_module.as_env(overrides, base={"PATH": "/bin"})
    assert env["PATH"] == "/bin"
    assert env["SINGLETON_AUTH__TOKEN_SECRET"] == "0123"  # a secret is never quoted or parsed
    cfg = config_module.load(env=env)
    for section, values in overrides.items():
        for key, value in values.items():
            assert cfg[section][key] == value, (section, key)
