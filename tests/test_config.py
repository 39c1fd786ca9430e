"""Settings, the command line and the README's settings table."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from handlers.auth import TokenConfig, TokenVerifier
from server.config import SETTINGS, ConfigError, Settings
from tests.support.chat import ANA, SECRET

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    return subprocess.run(
        [sys.executable, "-m", "server", *args], cwd=ROOT, env={**clean, **(env or {})},
        capture_output=True, text=True, timeout=30,
    )


def test_missing_settings_are_all_named():
    with pytest.raises(ConfigError) as err:
        Settings.from_env({})
    assert "MONGODB_URI" in str(err.value) and "JWT_SECRET" in str(err.value)


def test_contradictory_jwt_settings():
    with pytest.raises(ConfigError, match="JWT_SECRET and JWT_PUBLIC_KEY"):
        Settings.from_env({"MONGODB_URI": "memory://", "JWT_SECRET": SECRET, "JWT_PUBLIC_KEY": "pem"})


def test_values_and_defaults():
    s = Settings.from_env({"MONGODB_URI": "mongodb://h:1/school?x=1", "JWT_SECRET": SECRET, "PORT": "9001",
                           "CORS_ORIGINS": "https://a.example, https://b.example"})
    assert (s.port, s.host, s.mongodb_db) == (9001, "0.0.0.0", "school")
    assert s.cors_origins == ("https://a.example", "https://b.example")
    assert s.jwt_algorithms == ("HS256",) and s.redis_url is None
    s = Settings.from_env({"MONGODB_URI": "mongodb://h:1/school", "MONGODB_DB": "other", "JWT_SECRET": SECRET})
    assert s.mongodb_db == "other"
    assert Settings.from_env({"MONGODB_URI": "mongodb://h", "JWT_SECRET": SECRET}).mongodb_db == "learnify"
    with pytest.raises(ConfigError, match="PORT"):
        Settings.from_env({"MONGODB_URI": "memory://", "JWT_SECRET": SECRET, "PORT": "http"})


def test_demo_ignores_storage_and_jwt_settings():
    s = Settings.from_env({"MONGODB_URI": "mongodb://elsewhere", "JWT_SECRET": SECRET, "PORT": "9002"}, demo=True)
    assert s.demo and s.mongodb_uri == "memory://" and s.host == "127.0.0.1" and s.port == 9002
    assert s.jwt_secret != SECRET and len(s.jwt_secret) >= 32
    assert Settings.from_env({}, demo=True).jwt_secret != s.jwt_secret  # a fresh key every run


def test_secrets_stay_out_of_reprs():
    s = Settings.from_env({"MONGODB_URI": "memory://", "JWT_SECRET": SECRET})
    assert SECRET not in repr(s)


def test_readme_settings_table_matches_the_code():
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", readme, flags=re.M))
    assert documented == set(SETTINGS)


def test_serving_without_settings_exits_naming_them():
    result = run_cli()
    assert result.returncode != 0
    assert "MONGODB_URI" in result.stderr and "JWT_SECRET" in result.stderr


def test_token_command_prints_a_token_the_server_accepts():
    result = run_cli("token", ANA.upper(), "--ttl", "120", env={"JWT_SECRET": SECRET})
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    verifier = TokenVerifier(TokenConfig(SECRET))
    assert verifier.verify(token) == ANA
    assert run_cli("token", "not-an-id", env={"JWT_SECRET": SECRET}).returncode != 0
    assert "JWT_SECRET" in run_cli("token", ANA).stderr


def test_token_command_includes_issuer_and_audience():
    env = {"JWT_SECRET": SECRET, "JWT_ISSUER": "learnify", "JWT_AUDIENCE": "chat"}
    token = run_cli("token", ANA, env=env).stdout.strip()
    assert TokenVerifier(TokenConfig(SECRET, issuer="learnify", audience="chat")).verify(token) == ANA


def test_json_log_format_writes_one_object_per_line():
    script = (
        "import logging; from server import logs; logs.configure('INFO', 'json'); "
        "logging.getLogger('handlers.events').warning('refused %s code=%s', 'send_message', 'not_member')"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=30)
    entry = json.loads(result.stderr.strip())
    assert entry["level"] == "WARNING" and entry["logger"] == "handlers.events"
    assert entry["message"] == "refused send_message code=not_member" and entry["time"].endswith("+00:00")


@pytest.mark.parametrize("name", ["RATE_LIMIT_SEND_BURST", "RATE_LIMIT_EVENTS_BURST"])
@pytest.mark.parametrize("value", ["0.5", "2.5", "0"])
def test_a_burst_that_is_not_a_whole_number_is_refused_at_start(name, value):
    """A fractional burst used to round down (to 0 below 1, turning the limit off) without a word."""
    with pytest.raises(ConfigError, match=f"{name} must be a whole number of at least 1, not '{value}'"):
        Settings.from_env({"MONGODB_URI": "memory://", "JWT_SECRET": SECRET, name: value})
    result = run_cli(env={"MONGODB_URI": "memory://", "JWT_SECRET": SECRET, name: value})
    assert result.returncode != 0 and name in result.stderr


def test_whole_bursts_and_a_limit_turned_off_are_accepted():
    s = Settings.from_env({"MONGODB_URI": "memory://", "JWT_SECRET": SECRET, "RATE_LIMIT_SEND_BURST": "6",
                           "RATE_LIMIT_EVENTS_BURST": "7.0", "RATE_LIMIT_SEND_PER_S": "0.05"})
    assert (s.rate_limits.send.burst, s.rate_limits.other.burst) == (6, 7)
    s = Settings.from_env({"MONGODB_URI": "memory://", "JWT_SECRET": SECRET, "RATE_LIMIT_SEND_PER_S": "0",
                           "RATE_LIMIT_SEND_BURST": "0"})
    assert not s.rate_limits.send.enabled


def test_redis_queue_settings_are_read_and_checked():
    base = {"MONGODB_URI": "memory://", "JWT_SECRET": SECRET, "REDIS_URL": "redis://r:6379/0"}
    s = Settings.from_env(base)
    assert (s.redis_cluster, s.redis_channels, s.redis_channel_linger_s) == (False, "group", 30.0)
    s = Settings.from_env({**base, "REDIS_CLUSTER": "true", "REDIS_CHANNELS": "single", "REDIS_CHANNEL_LINGER_S": "5"})
    assert (s.redis_cluster, s.redis_channels, s.redis_channel_linger_s) == (True, "single", 5.0)
    for name, value in (("REDIS_CLUSTER", "maybe"), ("REDIS_CHANNELS", "rooms"), ("REDIS_CHANNEL_LINGER_S", "-1")):
        with pytest.raises(ConfigError, match=name):
            Settings.from_env({**base, name: value})
    with pytest.raises(ConfigError, match="not sentinels"):
        Settings.from_env({**base, "REDIS_URL": "redis+sentinel://s:26379/q", "REDIS_CLUSTER": "true"})
