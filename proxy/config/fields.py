"""What the ``Settings`` struct says about each setting, in words: its default, what it accepts,
and its kind (a switch, a choice among names, a value). ``--help`` (proxy/config/flags.py), the
reference (proxy/config/reference.py) and the loading of values (proxy/config/loading.py) read
it, so that they cannot disagree with the validation.
"""

from __future__ import annotations

import enum
import typing
from functools import cache

import msgspec
import msgspec.inspect as mi

from proxy.config.settings import Settings

__all__ = ["accepts", "choices", "default_text", "field", "is_number", "is_switch"]


@cache
def _fields() -> dict[str, mi.Field]:
    struct = mi.type_info(Settings)
    assert isinstance(struct, mi.StructType)
    return {f.encode_name: f for f in struct.fields}


def field(name: str) -> mi.Field:
    """The struct's field of setting ``name`` (``LEASE_TTL``)."""
    return _fields()[name]


def _bare(info: mi.Type) -> mi.Type:
    """The type without ``| None``."""
    if isinstance(info, mi.UnionType):
        kinds = [t for t in info.types if not isinstance(t, mi.NoneType)]
        if len(kinds) == 1:
            return kinds[0]
    return info


def is_switch(name: str) -> bool:
    """A true-or-false setting (a ``--flag/--no-flag`` pair)."""
    return isinstance(_bare(field(name).type), mi.BoolType)


def is_number(name: str) -> bool:
    return isinstance(_bare(field(name).type), mi.IntType | mi.FloatType)


def choices(name: str) -> tuple[str, ...] | None:
    """The names a choice setting accepts (in lower case, as declared); None for the others."""
    info = _bare(field(name).type)
    if isinstance(info, mi.LiteralType):  # as declared: msgspec sorts them
        hint = typing.get_type_hints(Settings, include_extras=False)[field(name).name]
        return tuple(str(value) for value in typing.get_args(hint))
    if isinstance(info, mi.EnumType):
        return tuple(str(member.value) for member in info.cls)
    return None


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
    if isinstance(info, mi.UnionType):
        return " or ".join(_accepts(t) for t in info.types if not isinstance(t, mi.NoneType))
    if isinstance(info, mi.BoolType):
        return "`true` or `false` (also `1`, `0`)"
    if isinstance(info, mi.IntType):
        return "integer" + _bounds(info)
    if isinstance(info, mi.FloatType):
        return "number" + _bounds(info)
    if isinstance(info, mi.LiteralType | mi.EnumType):
        raise AssertionError("choices are described by accepts()")
    if isinstance(info, mi.StrType):
        if info.pattern is not None:
            return f"text matching `{info.pattern}`"
        if info.min_length is not None:
            return f"text of at least {info.min_length} characters"
        return "text"
    raise TypeError(f"no description for {info!r}")  # a new kind of setting: describe it here


def accepts(name: str) -> str:
    """What msgspec's validation of setting ``name`` accepts, in words (Markdown)."""
    names = choices(name)
    if names is not None:
        return "one of " + ", ".join(f"`{value}`" for value in names) + " (any case)"
    return _accepts(field(name).type)


def default_text(name: str, *, markdown: bool = True) -> str:
    """The default of setting ``name`` as the reference (``markdown``) or ``--help`` shows it."""
    value = field(name).default
    if value is None or value is msgspec.NODEFAULT:
        return "(unset)" if markdown else "unset"
    if value == "":
        return "(empty)" if markdown else "empty"
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, enum.Enum):
        text = str(value.value)
    elif isinstance(value, float):
        text = f"{value:g}"
    else:
        text = str(value)
    return f"`{text}`" if markdown else text
