"""The one module that reads settings' values: from the environment, the optional TOML
configuration file (``--config``), the flags, and the files a ``*_FILE`` variable names.

Precedence, highest first: a flag, the environment, the configuration file, the default. In each
of those, a secret of SECRET_FILES may be given by its ``*_FILE`` name instead (the file's
content, trailing newline dropped); giving both names in one place is an error. Values are
checked by ``Settings`` (proxy/config/settings.py); an error names the setting and, when it is
not the environment, where the value came from, never a secret's value.
"""

from __future__ import annotations

import argparse
import difflib
import re
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

import msgspec

from broker import ConfigError
from proxy.config.checks import check
from proxy.config.fields import choices
from proxy.config.settings import HELP, SECRET_FILES, InvalidSetting, Settings, invalid

__all__ = ["Loaded", "load_settings", "read_settings"]

#: Largest file a ``*_FILE`` variable may name: a secret, not a data set.
_SECRET_FILE_MAX_BYTES = 64 * 1024
#: Settings that are lists separated by commas: a configuration file may give a TOML array.
_LISTS = frozenset({"SESSIONS", "PROXY_API_KEYS", "REDIS_SENTINELS", "RATE_LIMIT_HEADER_FAMILIES"})

Value = str | int | float | bool


@dataclass(frozen=True, slots=True)
class _Given:
    value: Value
    #: Where it came from, for an error message: '' for the environment.
    source: str


@dataclass(frozen=True, slots=True)
class Loaded:
    settings: Settings
    #: The settings given somewhere (flag, environment or file), not left to their default.
    given: frozenset[str]


def _read_secret(file_name: str, path: str, source: str) -> str:
    """The content of the file ``file_name`` names, without its trailing newline."""
    where = f"{file_name}={path}" + (f" (from {source})" if source else "")
    try:
        with open(path, "rb") as handle:
            raw = handle.read(_SECRET_FILE_MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read {where}: {exc.strerror or exc}") from exc
    if len(raw) > _SECRET_FILE_MAX_BYTES:
        raise ConfigError(f"{where}: larger than {_SECRET_FILE_MAX_BYTES} bytes")
    try:
        text = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where}: not UTF-8 text") from exc
    if not text:
        raise ConfigError(f"{where}: the file is empty")
    return text


def _layer(
    values: Mapping[str, Value | None], source: str, wanted: Collection[str]
) -> dict[str, _Given]:
    """The ``wanted`` settings of one place (flags, environment or a configuration file),
    ``*_FILE`` names replaced by their files' content; an empty value counts as unset."""
    given = {
        name: _Given(value, source)
        for name, value in values.items()
        if name in wanted and value is not None and value != ""
    }
    for file_name, name in SECRET_FILES.items():
        path = values.get(file_name)
        if name not in wanted or path is None or path == "":
            continue
        if name in given:
            where = f" ({source})" if source else " (in the environment)"
            raise ConfigError(f"both {name} and {file_name} are set{where}: set only one")
        named = f"{source}, {file_name}" if source else file_name
        given[name] = _Given(_read_secret(file_name, str(path), source), named)
    return given


def _config_file(path: Path) -> dict[str, Value]:
    """The settings of a TOML configuration file; an unknown key is an error naming it."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read --config {path}: {exc.strerror or exc}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config {path}: not valid TOML: {exc}") from exc
    values: dict[str, Value] = {}
    for key, value in document.items():
        if key not in HELP and key not in SECRET_FILES:
            raise ConfigError(f"--config {path}: unknown setting {key!r}{_did_you_mean(key)}")
        if isinstance(value, list) and key in _LISTS and all(isinstance(v, str) for v in value):
            value = ",".join(value)
        if not isinstance(value, str | int | float | bool):
            raise ConfigError(
                f"--config {path}: {key} must be a string, number or true/false, "
                f"not a {type(value).__name__}"
            )
        values[key] = value
    return values


def _did_you_mean(key: str) -> str:
    close = difflib.get_close_matches(key.upper(), [*HELP, *SECRET_FILES], n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _lowered(name: str, value: Value) -> Value:
    """A choice's value in lower case: LOG_LEVEL=INFO is info."""
    return value.lower() if isinstance(value, str) and choices(name) else value


def read_settings(
    environ: Mapping[str, str],
    flags: argparse.Namespace | None = None,
    *,
    config: Path | None = None,
    only: Collection[str] | None = None,
) -> Loaded:
    """Settings from a flag, else the environment, else the configuration file ``config``, else
    the default; raises ConfigError when invalid.

    With ``only`` (e.g. STORE_SETTINGS for the operator commands), just those settings are read
    and checked; the others keep their defaults, so a command that never forwards a request
    needs no UPSTREAM_URL or sessions and is not stopped by a setting it does not use (the same
    configuration file serves both).
    """
    wanted = set(HELP) if only is None else set(only) & set(HELP)
    layers = [_layer(_config_file(config), f"--config {config}", wanted)] if config else []
    layers.append(_layer(environ, "", wanted))
    if flags is not None:
        layers.append(_layer(vars(flags), "a flag", wanted))
    given: dict[str, _Given] = {}
    for layer in layers:
        given |= layer
    raw = {name: _lowered(name, v.value) for name, v in given.items()}
    try:
        settings = msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        match = re.search(r"at `\$\.([A-Z_]+)`", str(exc))
        if match is None:
            raise ConfigError(f"invalid settings: {exc}") from exc
        name = match.group(1)
        reason = str(exc)[: match.start()].rstrip(" -").replace("`", "")
        raise invalid(name, raw.get(name), reason, source=given[name].source) from exc
    try:
        check(settings)
    except InvalidSetting as exc:
        source = given[exc.name].source if exc.name in given else ""
        raise exc.came_from(source) from exc
    return Loaded(settings, frozenset(given))


def load_settings(
    environ: Mapping[str, str],
    flags: argparse.Namespace | None = None,
    *,
    config: Path | None = None,
    only: Collection[str] | None = None,
) -> Settings:
    """``read_settings(...).settings``."""
    return read_settings(environ, flags, config=config, only=only).settings
