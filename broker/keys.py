"""The Redis key layout of a pool. Every key carries the pool's hash tag, so a script touches one
slot and runs unchanged on Redis Cluster. Scripts get only ``PoolKeys.base`` as their one KEY and
derive the names listed in ``PoolKeys.all`` from it (see ``lua/common.lua``): packing every name
into each call cost the replica more than anything else in a script call."""

from __future__ import annotations

from dataclasses import dataclass

from broker.constants import KEY_PREFIX


@dataclass(frozen=True, slots=True)
class PoolKeys:
    """Names of the keys of one pool."""

    pool: str

    @property
    def base(self) -> str:
        """The one key every script is given; every key of the pool starts with it."""
        return f"{KEY_PREFIX}:{{{self.pool}}}"

    def tier(self, priority: int) -> str:
        """The ZSET of the eligible sessions of one priority tier (a subset of ``avail``)."""
        return f"{self.base}:avail:{priority}"

    def session(self, session_id: str) -> str:
        """The hash of one session: ``HGETALL`` on it shows the session's whole state."""
        return f"{self.base}:s:{session_id}"

    @property
    def claims(self) -> tuple[str, str]:
        """The keys only sync uses: the ZSET of replica claims (replica id -> claim deadline)
        and the prefix of each replica's claim (a ZSET of the ids it names)."""
        return (f"{self.base}:claims", f"{self.base}:claim:")

    @property
    def all(self) -> tuple[str, ...]:
        """Every key (or key prefix) the scripts derive from ``base``, in a fixed order."""
        b = self.base
        return (
            f"{b}:pool",
            f"{b}:members",
            f"{b}:avail",
            f"{b}:cooling",
            f"{b}:leases",
            f"{b}:owners",
            f"{b}:expired",
            f"{b}:released",
            f"{b}:disabled",
            f"{b}:s:",
            f"{b}:open",
            f"{b}:quota",
            f"{b}:probes",
            f"{b}:waiters",
            f"{b}:tickets",
            # Appended for operations ; keep new keys at the end so indices stay put.
            f"{b}:half_open",
            f"{b}:alerts",
            f"{b}:outcomes",
            f"{b}:summary",
            # Appended for priority tiers and unit quotas (issue 8).
            f"{b}:tiers",
            f"{b}:avail:",
            f"{b}:charges",
        )

    @property
    def wake_channel(self) -> str:
        """Pub/sub channel on which the scripts announce a session that became available."""
        return f"{self.base}:wake"
