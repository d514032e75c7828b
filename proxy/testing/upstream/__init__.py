"""A simulated upstream API that enforces per-credential limits exactly, for the demo, the tests
and the fleet benchmark (``bench/fleet.py``).

Per credential: an rpm limit, a cap on concurrent requests and a ``tpm`` budget of units
(tokens), each answered 429 with ``Retry-After`` (delta-seconds or HTTP-date) when exceeded, or
with no header at all (``headerless_429``: what a web app's private API sends). The rpm limit
is a token bucket or a fixed window, and may follow a schedule (``limits``). With
``ratelimit_headers`` each answer under an rpm limit carries OpenAI-style
``x-ratelimit-{limit,remaining,reset}-requests`` (the rpm in force), under a tpm
``x-ratelimit-{limit,remaining,reset}-tokens``. A ``Latency`` distribution sets the service time
of admitted requests; ``Faults`` inject failures per credential (``faults``).

The modules, by concept: ``limits`` (the limits and their arithmetic), ``faults`` (latency and
injected failures), ``answers`` (what an admitted request gets), ``app`` (the server, its routes
and its counts), ``config`` (the same as a JSON file) and ``__main__`` (``python -m
proxy.testing.upstream --port 8000 --config sim.json``).
"""

from __future__ import annotations

from proxy.testing.upstream.answers import DEFAULT_COMPLETION_UNITS
from proxy.testing.upstream.app import (
    CANCELLED,
    LIMIT_REASONS,
    RESET,
    Charge,
    Forced,
    SimulatedUpstream,
)
from proxy.testing.upstream.config import CredentialConfig, UpstreamConfig
from proxy.testing.upstream.faults import NO_FAULTS, Faults, Latency
from proxy.testing.upstream.limits import UNIT_WINDOW_S, CredentialStats, Limits, Shape

__all__ = [
    "CANCELLED",
    "DEFAULT_COMPLETION_UNITS",
    "LIMIT_REASONS",
    "NO_FAULTS",
    "RESET",
    "UNIT_WINDOW_S",
    "Charge",
    "CredentialConfig",
    "CredentialStats",
    "Faults",
    "Forced",
    "Latency",
    "Limits",
    "Shape",
    "SimulatedUpstream",
    "UpstreamConfig",
]
