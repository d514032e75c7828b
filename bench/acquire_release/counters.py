"""Reading Redis's counters for the acquire+release benchmark: ``INFO commandstats`` and CPU
summed over the measured slices of one (strategy, pool size), and the SLOWLOG audit that tells
a client's commands from a script's."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.acquire_release.workers import Tally
from broker.preamble import OPERATIONS, function_name, source

#: The bench's own Redis connection; its commands are not the workload's.
ADMIN_CLIENT_NAME = "bench-admin"
#: Commands the bench itself sends inside a measured window (the reset that opens it).
HARNESS_COMMANDS = frozenset({"config|resetstat"})
#: The commands that run a script: FCALL, and EVALSHA in a baseline (``--baseline``) of before
#: the function library.
SCRIPT_CALLS = frozenset({"fcall", "evalsha"})
#: A script's own commands reach SLOWLOG under this address.
SCRIPT_CLIENT_ADDRESS = "?:0"


def script_command_names() -> frozenset[str]:
    """Every command name a script calls (``redis.call('NAME', ...)``), lower case."""
    pattern = re.compile(r"""redis\.p?call\(\s*['"]([A-Za-z]+)['"]""")
    names = {name.lower() for op in OPERATIONS for name in pattern.findall(source(op))}
    return frozenset(names)


def script_functions() -> dict[str, str]:
    """The library's function of each operation (what FCALL names) -> the operation."""
    return {function_name(op): op for op in OPERATIONS}


def command_calls(info: dict[str, Any]) -> dict[str, int]:
    """``INFO commandstats`` as command name -> calls."""
    prefix = "cmdstat_"
    return {k[len(prefix) :]: int(v["calls"]) for k, v in info.items() if k.startswith(prefix)}


def command_usec(info: dict[str, Any]) -> dict[str, int]:
    """``INFO commandstats`` as command name -> microseconds spent in it."""
    prefix = "cmdstat_"
    return {k[len(prefix) :]: int(v["usec"]) for k, v in info.items() if k.startswith(prefix)}


def redis_cpu_s(info: dict[str, Any]) -> float:
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


@dataclass
class AuditResult:
    """Client commands seen in SLOWLOG during the audit, and the Redis time of each script."""

    pairs: int
    acquires: int
    releases: int
    fcall: dict[str, int]
    other: dict[str, int]
    acquire_usec: float
    release_usec: float
    complete: bool

    @property
    def ok(self) -> bool:
        expected = {"acquire": self.acquires, "release": self.releases}
        return self.complete and not self.other and self.fcall == expected


def read_audit(
    entries: Sequence[dict[str, Any]], tallies: Sequence[Tally], complete: bool
) -> AuditResult:
    functions = script_functions()
    fcall: Counter[str] = Counter()
    usec: Counter[str] = Counter()
    other: Counter[str] = Counter()
    for entry in entries:
        if _text(entry["client_name"]) == ADMIN_CLIENT_NAME:
            continue
        if _text(entry["client_address"]) == SCRIPT_CLIENT_ADDRESS:
            continue
        words = _text(entry["command"]).split()
        name = words[0].lower() if words else "?"
        operation = functions.get(words[1], "other script") if name == "fcall" else None
        if operation is None:
            other[name] += 1
            continue
        fcall[operation] += 1
        usec[operation] += int(entry["duration"])
    return AuditResult(
        pairs=sum(t.pairs for t in tallies),
        acquires=sum(t.acquires for t in tallies),
        releases=sum(t.releases for t in tallies),
        fcall=dict(fcall),
        other=dict(other),
        acquire_usec=usec["acquire"] / max(1, fcall["acquire"]),
        release_usec=usec["release"] / max(1, fcall["release"]),
        complete=complete,
    )


@dataclass
class Sample:
    """The counters of the measured slices of one (strategy, pool size), summed."""

    seconds: float = 0.0
    pairs: int = 0
    acquires: int = 0
    releases: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    calls: Counter[str] = field(default_factory=Counter)
    #: Redis time (commandstats usec) of the script calls, and of the commands scripts ran.
    usec: Counter[str] = field(default_factory=Counter)
    redis_cpu_s: float = 0.0
    client_cpu_s: float = 0.0

    def add(self, seconds: float, tallies: Sequence[Tally], info: dict[str, Any]) -> None:
        """Add one slice: the workers' tallies and ``INFO commandstats`` read right after it."""
        self.seconds += seconds
        for tally in tallies:
            self.pairs += tally.pairs
            self.acquires += tally.acquires
            self.releases += tally.releases
            self.errors.update(tally.errors)
            self.client_cpu_s += tally.cpu_s
        self.calls.update(command_calls(info))
        self.usec.update(command_usec(info))


@dataclass
class Row:
    """One (strategy, pool size) measurement."""

    strategy: str
    size: int
    seconds: float
    pairs: int
    acquires: int
    releases: int
    errors: dict[str, int]
    pairs_per_s: float
    script_calls: int
    other_commands: dict[str, int]
    script_commands: int
    #: Redis time per script call (commandstats usec of FCALL, or of EVALSHA in a baseline of
    #: before the function library; its commands included).
    usec_per_call: float
    #: The same per pair (one acquire and one release): a proxied request's share of Redis.
    usec_per_pair: float
    #: Of that, the time in the commands the scripts ran; the rest is Lua and its calls.
    command_usec_per_pair: float
    #: The Redis main thread's CPU (INFO cpu) per pair: network and parsing included.
    cpu_usec_per_pair: float
    redis_cpu: float
    client_cpu: float
    audit: AuditResult | None
    #: The baseline's git ref ("" for this checkout's code).
    code: str = ""
    #: Filled in once the smallest size of the same strategy is known.
    ratio: float = 1.0
    cost_ratio: float = 1.0

    @property
    def calls_per_pair(self) -> float:
        return self.script_calls / max(1, self.pairs)

    @property
    def one_round_trip_each(self) -> bool:
        counted = self.script_calls == self.acquires + self.releases and not self.other_commands
        return counted and not self.errors and (self.audit is None or self.audit.ok)


def make_row(
    label: str, size: int, sample: Sample, audit: AuditResult | None, *, code: str = ""
) -> Row:
    inner = script_command_names()
    calls = sum(sample.calls[name] for name in SCRIPT_CALLS)
    usec = sum(sample.usec[name] for name in SCRIPT_CALLS)
    seconds = max(sample.seconds, 1e-9)
    pairs = max(1, sample.pairs)
    return Row(
        strategy=label,
        size=size,
        seconds=sample.seconds,
        pairs=sample.pairs,
        acquires=sample.acquires,
        releases=sample.releases,
        errors=dict(sample.errors),
        pairs_per_s=sample.pairs / seconds,
        script_calls=calls,
        other_commands={
            name: n
            for name, n in sample.calls.items()
            if name not in inner | HARNESS_COMMANDS | SCRIPT_CALLS
        },
        script_commands=sum(n for name, n in sample.calls.items() if name in inner),
        usec_per_call=usec / max(1, calls),
        usec_per_pair=usec / pairs,
        command_usec_per_pair=sum(u for name, u in sample.usec.items() if name in inner) / pairs,
        cpu_usec_per_pair=sample.redis_cpu_s * 1e6 / pairs,
        redis_cpu=sample.redis_cpu_s / seconds,
        client_cpu=sample.client_cpu_s / seconds,
        audit=audit,
        code=code,
    )
