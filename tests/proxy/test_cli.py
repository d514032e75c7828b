"""The command line by the conventions people know, run as real ``session-broker`` processes
where it matters: --version, serve --help by group with defaults and variables (and the
configuration reference listing the same), --config, *_FILE secrets, --flag/--no-flag, choices in
any case, and an unknown flag answered by its subcommand's usage."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import aiohttp
import pytest

from broker import ConfigError, Strategy
from proxy.cli import parse
from proxy.config.loading import load_settings, read_settings
from proxy.config.settings import GROUPS, HELP, SECRET_FILES, STORE_SETTINGS

ROOT = Path(__file__).parent.parent.parent
CONFIGURATION = ROOT / "docs" / "configuration.md"
BASE = {"UPSTREAM_URL": "http://127.0.0.1:1", "SESSIONS": "k1,k2"}


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    command = shutil.which("session-broker")
    argv = [command] if command else [sys.executable, "-m", "proxy"]
    clean = {k: v for k, v in os.environ.items() if k not in HELP and k not in SECRET_FILES}
    return subprocess.run(
        [*argv, *args], env=clean | (env or {}), capture_output=True, text=True, timeout=60
    )


def flat(text: str) -> str:
    """Help text with argparse's line wrapping undone."""
    return " ".join(text.split())


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(flag: str) -> None:
    """--version (and -V) prints the package's version and exits 0."""
    result = run(flag)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"session-broker {version('session-broker')}"


def test_serve_help_shows_groups_defaults_and_variables() -> None:
    """serve --help lists the settings under their groups, in order, each flag with its
    default and its environment variable; switches as --flag/--no-flag; choices spelt out."""
    result = run("serve", "--help")
    assert result.returncode == 0, result.stderr
    text = flat(result.stdout)
    positions = [text.index(f" {title}: ") for title in GROUPS]
    assert positions == sorted(positions)
    for (title, settings), start, end in zip(
        GROUPS.items(), positions, [*positions[1:], len(text)], strict=True
    ):
        section = text[start:end]
        for name in settings:
            flag = "--" + name.lower().replace("_", "-")
            assert re.search(rf"(^| ){flag}[ ,]", section), f"{flag} not under {title}"
            assert f"env {name})" in section
            if name != "RETRY_COUNT":  # its text says what unset means
                assert re.search(rf"\(default: [^;]+; env {name}\)", section), name
    for shown in [
        "(default: 0.0.0.0:8080; env LISTEN)",
        "(default: 60; env LEASE_TTL)",
        "(default: true; env ENABLE_METRICS)",
        "(default: health; env SESSION_SELECTION_STRATEGY)",
        "(default: unset; env REDIS_URL)",
        "--enable-metrics, --no-enable-metrics",
        "--log-level {debug,info,warning,error}",
        "--admin-token-file PATH",
        "--config FILE",
    ]:
        assert shown in text
    assert "/healthz" in text
    assert "/readyz" in text
    assert "/admin" in text


def test_reference_and_help_list_the_same_settings() -> None:
    """Every variable and flag of docs/configuration.md is in serve --help, and vice versa."""
    reference = CONFIGURATION.read_text()
    rows = [line for line in reference.splitlines() if line.startswith("| `")]
    documented_names = {n for row in rows for n in re.findall(r"`([A-Z][A-Z0-9_]+)`", row)}
    documented_flags = {f for row in rows for f in re.findall(r"`(--[a-z][a-z0-9-]+)`", row)}
    help_text = flat(run("serve", "--help").stdout)
    options = help_text[help_text.index("options:") :]
    helped_names = set(re.findall(r"env ([A-Z][A-Z0-9_]+)\)", options))
    helped_flags = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]+)", options))
    helped_flags -= {"--help", "--config"}
    assert documented_names == helped_names
    assert documented_flags == helped_flags
    assert helped_names == set(HELP) | set(SECRET_FILES)


def test_an_unknown_flag_gets_its_subcommands_usage() -> None:
    """An unknown flag is answered by the usage of the subcommand it was given to (exit 2)."""
    for command in ["serve", "status", "sessions enable a", "export"]:
        result = run(*command.split(), "--no-such-flag")
        command = command.split()[0]
        assert result.returncode == 2
        assert result.stderr.startswith(f"usage: session-broker {command}"), result.stderr
        assert "unrecognized arguments: --no-such-flag" in result.stderr


def test_precedence_flag_environment_file_default(tmp_path: Path) -> None:
    """A flag wins over the environment, the environment over the configuration file, the
    file over the default; keys are the variables' names, values TOML's own types."""
    config = tmp_path / "broker.toml"
    config.write_text(
        'UPSTREAM_URL = "http://127.0.0.1:1"\nSESSIONS = ["k1", "k2"]\n'
        "LEASE_TTL = 5\nRATE_LIMIT_COOLDOWN = 30\nQUEUE_MAX = 7\nENABLE_METRICS = false\n"
        'LISTEN = "127.0.0.1:7001"\n'
    )
    args = parse(["serve", "--config", str(config), "--queue-max", "9"])
    environ = {"RATE_LIMIT_COOLDOWN": "20", "QUEUE_MAX": "8", "LISTEN": ""}
    loaded = read_settings(environ, args, config=config)
    settings = loaded.settings
    assert settings.lease_ttl == 5  # the file
    assert settings.rate_limit_cooldown == 20  # the environment over the file
    assert settings.queue_max == 9  # the flag over both
    assert settings.enable_metrics is False  # the file's boolean
    assert settings.listen == "127.0.0.1:7001"  # an empty variable counts as unset
    assert settings.api_keys == ()  # the default
    assert settings.backoff_max == 2.0
    assert loaded.given >= {"LEASE_TTL", "QUEUE_MAX", "SESSIONS"}
    assert "BACKOFF_MAX" not in loaded.given


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("listen = '127.0.0.1:1'\n", "unknown setting 'listen' (did you mean LISTEN?)"),
        ("NO_SUCH_THING = 1\n", "unknown setting 'NO_SUCH_THING'"),
        ("LISTEN = \n", "not valid TOML"),
        ("[LISTEN]\nport = 1\n", "LISTEN must be a string, number or true/false"),
        ("LEASE_TTL = 'soon'\n", "invalid setting LEASE_TTL='soon' (from --config"),
    ],
    ids=["lower-case", "unknown", "syntax", "table", "bad-value"],
)
def test_configuration_file_errors_name_key_and_file(
    tmp_path: Path, content: str, message: str
) -> None:
    """A bad configuration file stops serve (exit 2) with one line naming the key (or the
    problem) and the file, and no traceback."""
    config = tmp_path / "broker.toml"
    config.write_text(content)
    result = run("serve", "--config", str(config), env=BASE)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert str(config) in result.stderr
    assert "Traceback" not in result.stderr
    missing = run("serve", "--config", str(tmp_path / "nope.toml"), env=BASE)
    assert missing.returncode == 2
    assert f"cannot read --config {tmp_path / 'nope.toml'}" in missing.stderr


def test_secret_files(tmp_path: Path) -> None:
    """X_FILE reads X from a file, its trailing newline dropped, in the environment, a flag or
    the configuration file; the file's value takes its place in the precedence."""
    token = tmp_path / "token"
    token.write_text("a-token-of-24-characters\n")
    keys = tmp_path / "keys"
    keys.write_text("key-one,key-two\r\n")
    settings = load_settings(BASE | {"ADMIN_TOKEN_FILE": str(token)})
    assert settings.admin_token == "a-token-of-24-characters"
    args = parse(["serve", "--proxy-api-keys-file", str(keys)])
    assert load_settings(BASE | {"PROXY_API_KEYS": "env-key"}, args).api_keys == (
        "key-one",
        "key-two",
    )
    config = tmp_path / "broker.toml"
    config.write_text(f'REDIS_URL_FILE = "{tmp_path / "url"}"\n')
    (tmp_path / "url").write_text("redis://:pa55word@127.0.0.1:6399/0\n")
    settings = load_settings(BASE, config=config)
    assert settings.redis_url == "redis://:pa55word@127.0.0.1:6399/0"
    assert "pa55word" in settings.secret_values  # and so redacted from the logs


def test_secret_file_errors_never_show_the_secret(tmp_path: Path) -> None:
    """Both X and X_FILE: an error naming both. A file that cannot be read or is empty: an
    error naming the variable and the path. A bad value read from a file: hidden."""
    token = tmp_path / "token"
    token.write_text("hunter2-hunter2-hunter2\n")
    both = run("serve", env=BASE | {"ADMIN_TOKEN": "x" * 20, "ADMIN_TOKEN_FILE": str(token)})
    assert both.returncode == 2
    assert "both ADMIN_TOKEN and ADMIN_TOKEN_FILE are set" in both.stderr
    missing = tmp_path / "missing"
    gone = run("serve", env=BASE | {"ADMIN_TOKEN_FILE": str(missing)})
    assert gone.returncode == 2
    assert f"cannot read ADMIN_TOKEN_FILE={missing}: No such file or directory" in gone.stderr
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match=f"PROXY_API_KEYS_FILE={empty}: the file is empty"):
        load_settings(BASE | {"PROXY_API_KEYS_FILE": str(empty)})
    url = tmp_path / "url"
    url.write_text("http://user:hunter2@127.0.0.1:6379\n")
    bad = run("serve", "--redis-url-file", str(url), env=BASE)
    assert bad.returncode == 2
    assert "invalid setting REDIS_URL=(hidden) (from a flag, REDIS_URL_FILE)" in bad.stderr
    for result in (both, gone, bad):
        assert "hunter2" not in result.stderr + result.stdout
        assert "Traceback" not in result.stderr


def test_switches_are_flag_pairs() -> None:
    """A true-or-false setting is --flag or --no-flag, either winning over the environment;
    a value after it is no longer part of the flag."""
    args = parse(["serve", "--no-enable-metrics", "--metrics-per-session"])
    settings = load_settings(BASE | {"ENABLE_METRICS": "true"}, args)
    assert (settings.enable_metrics, settings.metrics_per_session) == (False, True)
    assert load_settings(BASE | {"ENABLE_METRICS": "false"}).enable_metrics is False
    unset = load_settings(BASE, parse(["serve"]))
    assert (unset.enable_metrics, unset.metrics_per_session) == (True, False)
    result = run("serve", "--enable-metrics", "true", env=BASE)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: session-broker serve")


def test_choices_in_any_case(tmp_path: Path) -> None:
    """LOG_LEVEL=INFO, --log-level WARNING, a strategy or a format in capitals: accepted, in
    the environment, as a flag and in the configuration file."""
    config = tmp_path / "broker.toml"
    config.write_text('LOG_FORMAT = "CONSOLE"\nREDIS_FAILURE_MODE = "Open"\n')
    environ = BASE | {"LOG_LEVEL": "INFO", "SESSION_SELECTION_STRATEGY": "Round-Robin"}
    settings = load_settings(environ, config=config)
    assert settings.log_level == "info"
    assert settings.session_selection_strategy is Strategy.ROUND_ROBIN
    assert (settings.log_format, settings.redis_failure_mode) == ("console", "open")
    flagged = load_settings(environ, parse(["serve", "--log-level", "WARNING"]))
    assert flagged.log_level == "warning"
    refused = run("serve", "--log-level", "LOUD", env=BASE)
    assert refused.returncode == 2
    assert "invalid choice: 'loud'" in refused.stderr
    assert run("status", env={"LOG_LEVEL": "INFO"}).returncode == 2  # REDIS_URL, not LOG_LEVEL


def test_listen_port_out_of_range_says_so() -> None:
    """LISTEN=127.0.0.1:70000 says the port is out of range, not that it is not host:port."""
    result = run("serve", env=BASE | {"LISTEN": "127.0.0.1:70000"})
    assert result.returncode == 2
    assert "port 70000 is out of range (1-65535" in result.stderr


def test_operator_commands_accept_a_configuration_file(tmp_path: Path) -> None:
    """The same configuration file serves serve and the operator commands: the settings an
    operator command does not read are not checked by it."""
    config = tmp_path / "broker.toml"
    config.write_text(
        'UPSTREAM_URL = "not checked here"\nLOG_LEVEL = "ERROR"\n'
        f'ADMIN_TOKEN_FILE = "{tmp_path / "only-on-the-replicas"}"\n'
    )
    loaded = read_settings({}, parse(["status", "--config", str(config)]), config=config,
                           only=STORE_SETTINGS)  # fmt: skip
    assert loaded.settings.log_level == "error"
    assert loaded.settings.upstream_url is None
    assert loaded.settings.admin_token is None


async def test_serve_from_a_configuration_file_and_a_token_file(
    tmp_path: Path, free_port: Callable[[], int]
) -> None:
    """A real replica started with nothing but --config: it listens where the file says, and
    its admin API takes the token read from ADMIN_TOKEN_FILE."""
    token = tmp_path / "admin-token"
    token.write_text("an-admin-token-from-a-file\n")
    admin_port = free_port()
    config = tmp_path / "broker.toml"
    config.write_text(
        f'UPSTREAM_URL = "http://127.0.0.1:{free_port()}"\nSESSIONS = ["secret-a"]\n'
        f'LISTEN = "127.0.0.1:{free_port()}"\nADMIN_LISTEN = "127.0.0.1:{admin_port}"\n'
        f'ADMIN_TOKEN_FILE = "{token}"\nLOG_LEVEL = "WARNING"\n'
    )
    command = shutil.which("session-broker")
    argv = [command] if command else [sys.executable, "-m", "proxy"]
    clean = {k: v for k, v in os.environ.items() if k not in HELP and k not in SECRET_FILES}
    process = await asyncio.create_subprocess_exec(
        *argv, "serve", "--config", str(config), env=clean, stderr=asyncio.subprocess.PIPE
    )
    try:
        url = f"http://127.0.0.1:{admin_port}/admin/pool"
        deadline = time.monotonic() + 30
        async with aiohttp.ClientSession() as http:
            while True:
                try:
                    headers = {"Authorization": "Bearer an-admin-token-from-a-file"}
                    async with http.get(url, headers=headers) as answer:
                        assert answer.status == 200
                        assert (await answer.json())["sessions"]["total"] == 1
                    async with http.get(url, headers={"Authorization": "Bearer wrong"}) as no:
                        assert no.status == 403
                    break
                except aiohttp.ClientConnectionError:
                    assert process.returncode is None, "the replica stopped"
                    assert time.monotonic() < deadline, "the replica never listened"
                    await asyncio.sleep(0.1)
    finally:
        process.terminate()
        await process.wait()
    assert process.stderr is not None
    assert "Traceback" not in (await process.stderr.read()).decode()
