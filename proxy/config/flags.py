"""The command-line flags of the settings: one per setting, named after its variable
(``LEASE_TTL`` is ``--lease-ttl``), in the groups the declarations make, each saying its default
and its environment variable. Switches are ``--flag/--no-flag`` pairs; a choice's flag accepts
its names in any case. A secret that may be read from a file has a ``--...-file`` flag too.

A flag never given stays None, so that proxy/config/loading.py can tell it from a value.
"""

from __future__ import annotations

import argparse
from collections.abc import Collection

from proxy.config.fields import choices, default_text, is_number, is_switch
from proxy.config.settings import GROUPS, SECRET_FILES

__all__ = ["add_config_flag", "add_flags", "flag_name"]


def flag_name(name: str) -> str:
    """The flag of a setting: ``LEASE_TTL`` is ``--lease-ttl``."""
    return "--" + name.lower().replace("_", "-")


def _metavar(name: str, text: str) -> str:
    if is_number(name):
        return "SECONDS" if text.startswith("seconds") else "NUMBER"
    if name.endswith("_URL"):
        return "URL"
    if name.endswith("_FILE"):
        return "PATH"
    if name.endswith("LISTEN"):
        return "HOST:PORT"
    return "VALUE"


def _help(text: str, name: str, default: str | None) -> str:
    """argparse %-formats help texts: a '%' of ours must be doubled."""
    shown = f"default: {default}; " if default is not None else ""
    return f"{text} ({shown}env {name})".replace("%", "%%")


def _add(group: argparse._ArgumentGroup, name: str, text: str) -> None:
    default: str | None = default_text(name, markdown=False)
    if default == "unset" and "default" in text:
        default = None  # the text says what an unset value means
    if is_switch(name):
        group.add_argument(
            flag_name(name),
            dest=name,
            action=argparse.BooleanOptionalAction,
            default=None,
            help=_help(text, name, default),
        )
        return
    names = choices(name)
    group.add_argument(
        flag_name(name),
        dest=name,
        type=str.lower if names else str,
        choices=names,
        metavar="{" + ",".join(names) + "}" if names else _metavar(name, text),
        help=_help(text, name, default),
    )


def _add_file(group: argparse._ArgumentGroup, file_name: str, name: str) -> None:
    text = f"a file holding {name}'s value (its trailing newline dropped); not with {name}"
    group.add_argument(
        flag_name(file_name), dest=file_name, metavar="PATH", help=_help(text, file_name, None)
    )


def add_flags(parser: argparse.ArgumentParser, *, only: Collection[str] | None = None) -> None:
    """One flag per setting (of ``only``, when given), by group, named after its variable."""
    files = {name: file_name for file_name, name in SECRET_FILES.items()}
    for title, settings in GROUPS.items():
        wanted = [name for name in settings if only is None or name in only]
        if not wanted:
            continue
        group = parser.add_argument_group(title)
        for name in wanted:
            _add(group, name, settings[name])
            if name in files:
                _add_file(group, files[name], name)


def add_config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        dest="config_file",
        help='a TOML file of settings under their variables\' names (LISTEN = "..."); the '
        "environment and flags win over it",
    )
