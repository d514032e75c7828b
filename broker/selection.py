"""Selection strategies: which eligible session an acquire picks.

Eligible means enabled, not cooling down and below its ``max_concurrency``. The eligible sessions
sit in one sorted set per pool, scored for the pool's strategy, so a pick reads a handful of
entries, never the whole pool. Each session's ``priority`` (higher preferred) is its tier: every
tier has its own eligible set, and acquire applies the strategy below within the best tier that
has a session the request may take, a lower tier only while every session above it is
unavailable:

``round-robin``
    One cluster-wide cursor per tier over its sessions in configuration order: with every session
    eligible, N sessions get exactly k picks each out of k*N. Weights are ignored.
``random``
    Uniform among the eligible sessions.
``lru``
    The eligible session used least recently.
``least-busy``
    Fewest live leases; among equals the least recently used.
``health`` (default)
    Weighted random: the chance of a session is proportional to ``weight x health``. A proposal
    drawn uniformly is accepted with probability ``score / highest score`` (exact weighted
    sampling by rejection; after 64 rejected proposals the last one is taken, which only happens
    when the scores differ by more than a factor of about 20 across most of the pool).

Health score, in ``[0.05, 1]``: ``max(0.05, success_rate x speed)``.
``success_rate`` is a moving average (each outcome weighs 0.1) of success (1) against auth,
server, network, timeout and other errors (0); 429s do not count, their cooldown deals with them.
While no outcome arrives it drifts back towards 1 with a half-life of 5 minutes. ``speed`` is 1
while the moving average of successful latencies stays under 2 s and falls to 0.5 at 4 s and
beyond. The floor of 0.05 means a flaky session gets less traffic but is never starved, so it can
prove it has recovered.
"""

from __future__ import annotations

from enum import StrEnum


class Strategy(StrEnum):
    ROUND_ROBIN = "round-robin"
    RANDOM = "random"
    LRU = "lru"
    LEAST_BUSY = "least-busy"
    HEALTH = "health"
