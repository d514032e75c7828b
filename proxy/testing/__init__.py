"""Parts for testing a deployment of session-broker, as the project's own tests, benchmarks and
``demo`` do: a simulated upstream that enforces per-credential limits exactly
(``SimulatedUpstream``, also ``python -m proxy.testing.upstream``) and private ``redis-server``
processes on free ports (``running_redis``, ``running_sentinel``, ``running_cluster``).
"""

from __future__ import annotations

from proxy.testing.redis import (
    ClusterGroup,
    SentinelGroup,
    running_cluster,
    running_redis,
    running_sentinel,
)
from proxy.testing.server import (
    ExecutableNotFound,
    LaunchError,
    RedisNode,
    find_executable,
    free_port,
    wait_until,
)
from proxy.testing.upstream import (
    CANCELLED,
    NO_FAULTS,
    RESET,
    CredentialConfig,
    Faults,
    Latency,
    Limits,
    SimulatedUpstream,
    UpstreamConfig,
)

__all__ = [
    "CANCELLED",
    "NO_FAULTS",
    "RESET",
    "ClusterGroup",
    "CredentialConfig",
    "ExecutableNotFound",
    "Faults",
    "Latency",
    "LaunchError",
    "Limits",
    "RedisNode",
    "SentinelGroup",
    "SimulatedUpstream",
    "UpstreamConfig",
    "find_executable",
    "free_port",
    "running_cluster",
    "running_redis",
    "running_sentinel",
    "wait_until",
]
