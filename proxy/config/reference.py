"""The configuration reference, docs/configuration.md, written from the settings declarations.

It reads what ``--help`` and validation read (``GROUPS`` and the ``Settings`` struct of
proxy/config/settings.py, through proxy/config/fields.py: the help text, the default and the type
with its bounds), so the reference cannot drift from the code: a test compares the file with
``render()``. Regenerate it with ``python -m proxy.config.reference docs/configuration.md``;
without a path it prints.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from proxy.config.fields import accepts, default_text, is_switch
from proxy.config.flags import flag_name
from proxy.config.settings import GROUPS, SECRET_FILES, SECRET_SETTINGS, STORE_SETTINGS

__all__ = ["render"]

_HEADER = """\
# Configuration reference

*Generated from the declarations in proxy/config/settings.py (the same ones `--help` and validation
read): edit them there, then run `python -m proxy.config.reference docs/configuration.md`. A
test fails while this file is stale.*

Every setting is an environment variable, a flag of the same name (`LEASE_TTL=30` or
`--lease-ttl 30`) and a key of the optional configuration file. `session-broker serve --help`
lists the same, by group, with each flag's default and variable. A true-or-false setting's flag
is a pair (`--redis-cluster` and `--no-redis-cluster`); the names a setting chooses among are
accepted in any case (`LOG_LEVEL=INFO`). A bad value stops start-up (exit 2) with one line
naming the variable and what it accepts; the value of a setting marked *secret* is never
repeated in that line. Settings marked *operator* are the only ones the operator commands
(`status`, `sessions`, `export`, `import`) read. Durations are seconds and may have decimals; an
empty variable counts as unset.

**Where a value comes from**, the first found wins: a flag, the environment, the configuration
file, the default. The configuration file is TOML, named by `--config FILE` (on `serve` and on
each operator command), with the variables' names as keys; a list separated by commas may be a
TOML array. A key that is no setting stops start-up with an error naming it and the file:

```toml
UPSTREAM_URL = "https://api.example.com"
LISTEN = "127.0.0.1:8080"
RATE_LIMIT_COOLDOWN = 30
REDIS_CLUSTER = false
PROXY_API_KEYS_FILE = "/run/secrets/api-keys"
```

**Secrets from files.** Each secret setting but `SESSIONS` (whose file is the sessions file,
`SESSIONS_FILE`) may instead be read from a file named by the same name with `_FILE` added
(`ADMIN_TOKEN_FILE=/run/secrets/admin-token`, or `--admin-token-file`, or the key in the
configuration file): the file's content with its trailing newline dropped, so that no secret
needs to be a flag or a variable that `ps` shows. Setting a secret and its `_FILE` in the same
place is an error naming both; a file that cannot be read is an error naming the variable and the
path, never the content. The variants:
FILE_VARIANTS.

The sessions themselves, and several pools with their own upstreams, are declared in the
sessions file: [sessions.md](sessions.md). What each setting does to a request is told in
[how-it-works.md](how-it-works.md).
"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


#: Marks shown after a setting's meaning, with the settings that carry each.
_MARKS = (("secret", SECRET_SETTINGS), ("operator", STORE_SETTINGS))


def _row(name: str, text: str) -> str:
    shown = [f"*{mark}*" for mark, names in _MARKS if name in names]
    files = [file_name for file_name, secret in SECRET_FILES.items() if secret == name]
    shown += [f"or from a file: `{file_name}`, `{flag_name(file_name)}`" for file_name in files]
    meaning = _cell(text) + (f" ({', '.join(shown)})" if shown else "")
    flags = f"`{flag_name(name)}`"
    if is_switch(name):
        flags += f", `--no-{flag_name(name)[2:]}`"
    cells = [f"`{name}`", flags, default_text(name), accepts(name)]
    return "| " + " | ".join([*cells, meaning]) + " |"


def render() -> str:
    """docs/configuration.md: one table per group, a row per setting, in declaration order."""
    variants = ", ".join(f"`{name}`" for name in SECRET_FILES)
    parts = [_HEADER.replace("FILE_VARIANTS", variants)]
    for group, settings in GROUPS.items():
        parts.append(f"\n## {group}\n\n")
        parts.append("| variable | flag | default | accepts | meaning |\n")
        parts.append("| --- | --- | --- | --- | --- |\n")
        parts.extend(_row(name, text) + "\n" for name, text in settings.items())
    return "".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    text = render()
    if args:
        Path(args[0]).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
