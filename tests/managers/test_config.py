"""Config: defaults, environment overrides, and validation that names the bad key."""

from __future__ import annotations

import pytest

from managers import config as config_module
from managers.config import ConfigError, ConfigManager


def test_repository_config_is_valid():
    cfg = config_module.load(env={})
    assert cfg["kafka"]["topic"] == "singleton-events"
    assert cfg["server"]["port"] == 8080


def test_environment_overrides_are_typed():
    cfg = config_module.load(env={"SINGLETON_SERVER__PORT": "9090", "SINGLETON_MYSQL__HOST": "db.internal"})
    assert cfg["server"]["port"] == 9090
    assert cfg["mysql"]["host"] == "db.internal"


def test_explicit_overrides_beat_environment():
    cfg = config_module.load(env={"SINGLETON_SERVER__PORT": "9090"}, overrides={"server": {"port": 7070}})
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
    cfg = config_module.load(env={})
    assert ConfigManager(cfg)["redis"] is cfg["redis"]
