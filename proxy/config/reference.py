"""The configuration reference, docs/configuration.md, written from the settings declarations.

It reads what ``--help`` and validation read (``GROUPS`` and the ``Settings`` struct of
proxy/config/settings.py: the help text, the default and the type with its bounds), so the reference
cannot drift from the code: a test compares the file with ``render()``. Regenerate it with
``python -m proxy.config.reference docs/configuration.md``; without a path it prints.
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Sequence
from pathlib import Path

import msgspec
import msgspec.inspect as mi

from proxy.config.settings import GROUPS, SECRET_SETTINGS, STORE_SETTINGS, Settings, flag_name

__all__ = ["render"]

_HEADER = """\
# Configuration reference

*Generated from the declarations in proxy/config/settings.py (the same ones `--help` and validation
read): edit them there, then run `python -m proxy.config.reference docs/configuration.md`. A
test fails while this file is stale.*

Every setting is an environment variable and a flag of the same name (`LEASE_TTL=30` or
`--lease-ttl 30`); a flag wins over the variable. `session-broker serve --help` lists the same.
A bad value stops start-up (exit 2) with one line naming the variable and what it accepts; the
value of a setting marked *secret* is never repeated in that line. Settings marked *operator* are
the only ones the operator commands (`status`, `sessions`, `export`, `import`) read. Durations
are seconds and may have decimals; an empty variable counts as unset.

The sessions themselves, and several pools with their own upstreams, are declared in the
sessions file: [sessions.md](sessions.md). What each setting does to a request is told in
[how-it-works.md](how-it-works.md).
"""


def _number(value: float) -> str:
    return f"{value:,g}" if isinstance(value, float) else f"{value:,}"


def _bounds(info: mi.IntType | mi.FloatType) -> str:
    """``ge=1, le=100`` as '1 to 100', ``gt=0`` as 'more than 0'."""
    low = f"{_number(info.ge)}" if info.ge is not None else None
    high = f"{_number(info.le)}" if info.le is not None else None
    if low is not None and high is not None:
        return f", {low} to {high}"
    parts = []
    if info.gt is not None:
        parts.append(f"more than {_number(info.gt)}")
    if low is not None:
        parts.append(f"at least {low}")
    if info.lt is not None:
        parts.append(f"less than {_number(info.lt)}")
    if high is not None:
        parts.append(f"at most {high}")
    return (", " if parts else "") + ", ".join(parts)


def _accepts(info: mi.Type) -> str:
    """What msgspec's validation of the field accepts, in words."""
    if isinstance(info, mi.UnionType):
        return " or ".join(_accepts(t) for t in info.types if not isinstance(t, mi.NoneType))
    if isinstance(info, mi.BoolType):
        return "`true` or `false` (also `1`, `0`)"
    if isinstance(info, mi.IntType):
        return "integer" + _bounds(info)
    if isinstance(info, mi.FloatType):
        return "number" + _bounds(info)
    if isinstance(info, mi.LiteralType):
        return "one of " + ", ".join(f"`{value}`" for value in info.values)
    if isinstance(info, mi.EnumType):
        return "one of " + ", ".join(f"`{member.value}`" for member in info.cls)
    if isinstance(info, mi.StrType):
        if info.pattern is not None:
            return f"text matching `{info.pattern}`"
        if info.min_length is not None:
            return f"text of at least {info.min_length} characters"
        return "text"
    raise TypeError(f"no description for {info!r}")  # a new kind of setting: describe it here


def _default(value: object) -> str:
    if value is None or value is msgspec.NODEFAULT:
        return "(unset)"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, enum.Enum):
        return f"`{value.value}`"
    if isinstance(value, float):
        return f"`{value:g}`"
    return f"`{value}`" if value != "" else "(empty)"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


#: Marks shown after a setting's meaning, with the settings that carry each.
_MARKS = (("secret", SECRET_SETTINGS), ("operator", STORE_SETTINGS))


def _row(name: str, text: str, field: mi.Field) -> str:
    shown = [f"*{mark}*" for mark, names in _MARKS if name in names]
    meaning = _cell(text) + (f" ({', '.join(shown)})" if shown else "")
    cells = [f"`{name}`", f"`{flag_name(name)}`", _default(field.default), _accepts(field.type)]
    return "| " + " | ".join([*cells, meaning]) + " |"


def render() -> str:
    """docs/configuration.md: one table per group, a row per setting, in declaration order."""
    struct = mi.type_info(Settings)
    assert isinstance(struct, mi.StructType)
    fields = {field.encode_name: field for field in struct.fields}
    parts = [_HEADER]
    for group, settings in GROUPS.items():
        parts.append(f"\n## {group}\n\n")
        parts.append("| variable | flag | default | accepts | meaning |\n")
        parts.append("| --- | --- | --- | --- | --- |\n")
        parts.extend(_row(name, text, fields[name]) + "\n" for name, text in settings.items())
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
