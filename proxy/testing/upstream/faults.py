"""How the simulated upstream misbehaves apart from its limits: the service time of an admitted
request (``Latency``) and the failures injected per credential (``Faults``): 5xx at random or in
periodic bursts (a flaky credential: ``burst_every_s`` 6, ``burst_for_s`` 2), connection resets,
a revoked credential (401), a slow one."""

from __future__ import annotations

import math
import random
import socket
import struct
from dataclasses import dataclass
from typing import Literal

from aiohttp import web

__all__ = ["NO_FAULTS", "Faults", "Latency", "reset_connection"]


@dataclass(frozen=True, slots=True)
class Latency:
    """Service time of an admitted request, in seconds, never above ``max_s``.

    ``fixed``: ``seconds``. ``uniform``: ``seconds`` +/- ``spread`` x ``seconds``.
    ``exponential``: mean ``seconds``. ``lognormal``: median ``seconds``, shape ``spread`` (the
    sigma of its logarithm; 0.5 puts p99 at about 3.2 x the median).
    """

    distribution: Literal["fixed", "uniform", "exponential", "lognormal"] = "fixed"
    seconds: float = 0.0
    spread: float = 0.0
    max_s: float = 60.0

    def sample(self, rng: random.Random) -> float:
        if self.seconds <= 0:
            return 0.0
        if self.distribution == "uniform":
            value = rng.uniform(self.seconds * (1 - self.spread), self.seconds * (1 + self.spread))
        elif self.distribution == "exponential":
            value = rng.expovariate(1 / self.seconds)
        elif self.distribution == "lognormal":
            value = rng.lognormvariate(math.log(self.seconds), self.spread)
        else:
            value = self.seconds
        return min(max(0.0, value), self.max_s)


@dataclass(frozen=True, slots=True)
class Faults:
    """Failures injected for one credential, decided before its limits (they cost no quota).

    ``revoked``: every attempt gets 401. ``error_rate``: that fraction of attempts gets
    ``error_status``. ``burst_every_s`` / ``burst_for_s``: for the first ``burst_for_s`` seconds
    of every ``burst_every_s`` (counted from ``burst_offset_s`` after the start or the last reset)
    every attempt gets ``error_status``. ``reset_rate``: that fraction of attempts has its
    connection reset without an answer. ``extra_latency_s``: added to every admitted request (a
    slow credential).
    """

    revoked: bool = False
    error_rate: float = 0.0
    error_status: int = 503
    burst_every_s: float = 0.0
    burst_for_s: float = 0.0
    burst_offset_s: float = 0.0
    reset_rate: float = 0.0
    extra_latency_s: float = 0.0

    def in_burst(self, elapsed_s: float) -> bool:
        if self.burst_every_s <= 0 or self.burst_for_s <= 0 or elapsed_s < self.burst_offset_s:
            return False
        return (elapsed_s - self.burst_offset_s) % self.burst_every_s < self.burst_for_s


NO_FAULTS = Faults()


def reset_connection(request: web.Request) -> None:
    """Drop the client's connection with a TCP RST (SO_LINGER 0), as a crashing server would."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
