"""Reading Redis's counters for the acquire+release benchmark: ``INFO commandstats`` and CPU
summed over the measured slices of one (strategy, pool size), and the SLOWLOG audit that tells
a client's commands from a script's."""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.acquire_release.workers import Tally
from broker.preamble import OPERATIONS, source

#: The bench's own Redis connection; its commands are not the workload's.
ADMIN_CLIENT_NAME = "bench-admin"
#: Commands the bench itself sends inside a measured window (the reset that opens it).
HARNESS_COMMANDS = frozenset({"config|resetstat"})
#: A script's own commands reach SLOWLOG under this address.
SCRIPT_CLIENT_ADDRESS = "?:0"


def script_command_names() -> frozenset[str]:
    """Every command name a script calls (``redis.call('NAME', ...)``), lower case."""
    pattern = re.compile(r"""redis\.p?call\(\s*['"]([A-Za-z]+)['"]""")
    names = {name.lower() for op in OPERATIONS for name in pattern.findall(source(op))}
    return frozenset(names)


def script_shas() -> dict[str, str]:
    """SHA1 of each script as sent (prelude + body) -> its operation name."""
    return {
        hashlib.sha1(source(op).encode(), usedforsecurity=False).hexdigest(): op
        for op in OPERATIONS
    }


def command_calls(info: dict[str, Any]) -> dict[str, int]:
    """``INFO commandstats`` as command name -> calls."""
    prefix = "cmdstat_"
    return {k[len(prefix) :]: int(v["calls"]) for k, v in info.items() if k.startswith(prefix)}


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
    evalsha: dict[str, int]
    other: dict[str, int]
    acquire_usec: float
    release_usec: float
    complete: bool

    @property
    def ok(self) -> bool:
        expected = {"acquire": self.acquires, "release": self.releases}
        return self.complete and not self.other and self.evalsha == expected


def read_audit(
    entries: Sequence[dict[str, Any]], tallies: Sequence[Tally], complete: bool
) -> AuditResult:
    shas = script_shas()
    evalsha: Counter[str] = Counter()
    usec: Counter[str] = Counter()
    other: Counter[str] = Counter()
    for entry in entries:
        if _text(entry["client_name"]) == ADMIN_CLIENT_NAME:
            continue
        if _text(entry["client_address"]) == SCRIPT_CLIENT_ADDRESS:
            continue
        words = _text(entry["command"]).split()
        name = words[0].lower() if words else "?"
        operation = shas.get(words[1].lower(), "other script") if name == "evalsha" else None
        if operation is None:
            other[name] += 1
            continue
        evalsha[operation] += 1
        usec[operation] += int(entry["duration"])
    return AuditResult(
        pairs=sum(t.pairs for t in tallies),
        acquires=sum(t.acquires for t in tallies),
        releases=sum(t.releases for t in tallies),
        evalsha=dict(evalsha),
        other=dict(other),
        acquire_usec=usec["acquire"] / max(1, evalsha["acquire"]),
        release_usec=usec["release"] / max(1, evalsha["release"]),
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
    evalsha_usec: int = 0
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
        self.evalsha_usec += int(info.get("cmdstat_evalsha", {}).get("usec", 0))


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
    evalsha: int
    other_commands: dict[str, int]
    script_commands: int
    usec_per_evalsha: float
    redis_cpu: float
    client_cpu: float
    audit: AuditResult | None
    #: Filled in once the smallest size of the same strategy is known.
    ratio: float = 1.0
    cost_ratio: float = 1.0

    @property
    def evalsha_per_pair(self) -> float:
        return self.evalsha / max(1, self.pairs)

    @property
    def one_round_trip_each(self) -> bool:
        counted = self.evalsha == self.acquires + self.releases and not self.other_commands
        return counted and not self.errors and (self.audit is None or self.audit.ok)


def make_row(label: str, size: int, sample: Sample, audit: AuditResult | None) -> Row:
    inner = script_command_names()
    evalsha = sample.calls["evalsha"]
    seconds = max(sample.seconds, 1e-9)
    return Row(
        strategy=label,
        size=size,
        seconds=sample.seconds,
        pairs=sample.pairs,
        acquires=sample.acquires,
        releases=sample.releases,
        errors=dict(sample.errors),
        pairs_per_s=sample.pairs / seconds,
        evalsha=evalsha,
        other_commands={
            name: calls
            for name, calls in sample.calls.items()
            if name not in inner | HARNESS_COMMANDS | {"evalsha"}
        },
        script_commands=sum(calls for name, calls in sample.calls.items() if name in inner),
        usec_per_evalsha=sample.evalsha_usec / max(1, evalsha),
        redis_cpu=sample.redis_cpu_s / seconds,
        client_cpu=sample.client_cpu_s / seconds,
        audit=audit,
    )
