"""Settings: every bad value stops start-up with a message naming the variable, no traceback."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import msgspec
import msgspec.inspect
import pytest

from broker import ConfigError, Strategy
from proxy.config.loading import load_settings
from proxy.config.reference import render
from proxy.config.settings import GROUPS, HELP, Settings

BASE = {"UPSTREAM_URL": "http://127.0.0.1:1", "SESSIONS": "k1,k2"}
CONFIGURATION = Path(__file__).parent.parent.parent / "docs" / "configuration.md"

BAD = [
    ("LEASE_TTL", "abc"),
    ("LEASE_TTL", "0"),
    ("RATE_LIMIT_COOLDOWN", "-1"),
    ("SESSION_SELECTION_STRATEGY", "fastest"),
    ("RETRY_COUNT", "0"),
    ("MAX_BODY_BYTES", "lots"),
    ("LISTEN", "8080"),
    ("ADMIN_LISTEN", "host:99999"),
    ("UPSTREAM_URL", "ftp://example.com"),
    ("REDIS_URL", "http://127.0.0.1:6379"),
    ("SESSION_HEADER", "Authorization: Bearer"),
    ("EXPONENTIAL_BACKOFF_ENABLED", "maybe"),
    ("LOG_LEVEL", "loud"),
    ("POOL", "a:b"),
    ("SESSIONS_FILE", "/nonexistent/sessions.json"),
]


def run_serve(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = shutil.which("session-broker")
    argv = [command, "serve"] if command else [sys.executable, "-m", "proxy", "serve"]
    clean = {k: v for k, v in os.environ.items() if k not in HELP}
    return subprocess.run(argv, env=clean | env, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize(("name", "value"), BAD, ids=[f"{n}={v}" for n, v in BAD])
def test_bad_setting_exits_2_naming_the_variable(name: str, value: str) -> None:
    """The process exits 2 with one line naming the variable, and prints no traceback."""
    env = BASE | {name: value}
    if name == "SESSIONS_FILE":
        env.pop("SESSIONS")
    result = run_serve(env)
    assert result.returncode == 2, result.stderr
    assert name in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_upstream_and_sessions() -> None:
    """No UPSTREAM_URL or no sessions: exit 2 with a message saying what to set."""
    result = run_serve({"SESSIONS": "k"})
    assert result.returncode == 2
    assert "UPSTREAM_URL" in result.stderr
    result = run_serve({"UPSTREAM_URL": "http://127.0.0.1:1"})
    assert result.returncode == 2
    assert "SESSIONS" in result.stderr


def test_secret_values_are_not_echoed() -> None:
    """An error about a secret-bearing setting does not print its value."""
    with pytest.raises(ConfigError) as caught:
        load_settings(BASE | {"REDIS_URL": "http://user:hunter2@host"})
    assert "hunter2" not in str(caught.value)


def test_flags_override_the_environment() -> None:
    """A flag of the same name wins over the variable."""
    from proxy.cli import _parser

    args = _parser().parse_args(["serve", "--session-selection-strategy", "lru"])
    settings = load_settings(BASE | {"SESSION_SELECTION_STRATEGY": "random"}, args)
    assert settings.session_selection_strategy is Strategy.LRU


def test_durations_become_milliseconds() -> None:
    """Seconds in the environment become the broker's integer milliseconds."""
    broker = load_settings(BASE | {"LEASE_TTL": "1.5", "RATE_LIMIT_COOLDOWN": "2"}).broker()
    assert broker.lease_ttl_ms == 1500
    assert broker.rate_limit_cooldown_ms == 2000


def test_every_setting_is_declared_in_one_group() -> None:
    """Each field of Settings has exactly one help text, in exactly one group."""
    declared = [name for group in GROUPS.values() for name in group]
    fields = [field.encode_name for field in msgspec.inspect.type_info(Settings).fields]
    assert sorted(declared) == sorted(fields)


def test_configuration_reference_documents_every_setting() -> None:
    """docs/configuration.md has a row for every setting, and no stale ones."""
    rows = set(re.findall(r"^\| `([A-Z_]+)` \|", CONFIGURATION.read_text(), flags=re.MULTILINE))
    assert rows == set(HELP)


def test_configuration_reference_is_current() -> None:
    """docs/configuration.md is what the declarations render to (regenerate it if not)."""
    assert CONFIGURATION.read_text() == render(), (
        "stale: run python -m proxy.config.reference docs/configuration.md"
    )
