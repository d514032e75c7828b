"""A simulated upstream described as data, for a file: ``UpstreamConfig`` (every credential's
limits and faults, the latency and the answers' headers) read from and written as JSON, and built
into a ``SimulatedUpstream``."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal

import msgspec

from proxy.testing.upstream.app import SimulatedUpstream
from proxy.testing.upstream.faults import NO_FAULTS, Faults, Latency
from proxy.testing.upstream.limits import Limits

__all__ = ["CredentialConfig", "UpstreamConfig"]


@dataclass(frozen=True, slots=True)
class CredentialConfig(Limits):
    """One credential's limits and faults, as written in a config file: the fields of ``Limits``,
    in a file side by side with ``faults``."""

    faults: Faults = NO_FAULTS

    @property
    def limits(self) -> Limits:
        """The limits alone, as a plain ``Limits``."""
        return Limits(**{limit.name: getattr(self, limit.name) for limit in fields(Limits)})


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    """A simulated upstream in a file, for ``python -m proxy.testing.upstream --config``::

    {"credentials": {"sk-1": {"rpm": 120, "burst": 2, "tpm": 40000},
                     "sk-2": {"rpm": 60, "faults": {"burst_every_s": 10, "burst_for_s": 2}},
                     "sk-3": {"rpm": 120, "shape": "window", "window_s": 60,
                              "schedule": [[60, 0.5], [120, 1.0]]}},
     "latency": {"distribution": "lognormal", "seconds": 0.05, "spread": 0.5},
     "retry_after_form": "seconds", "ratelimit_headers": true, "headerless_429": false,
     "seed": 1}
    """

    credentials: dict[str, CredentialConfig] = field(default_factory=dict)
    latency: Latency = field(default_factory=Latency)
    retry_after_form: Literal["seconds", "http-date"] = "seconds"
    ratelimit_headers: bool = False
    retry_after_ms: bool = False
    headerless_429: bool = False
    credential_header: str = "Authorization"
    credential_prefix: str = "Bearer "
    completion_units: int | None = None
    seed: int | None = None

    @classmethod
    def from_json(cls, text: str | bytes) -> UpstreamConfig:
        return msgspec.json.decode(text, type=cls)

    def to_json(self) -> bytes:
        return msgspec.json.encode(self)

    def build(self) -> SimulatedUpstream:
        return SimulatedUpstream(
            limits={name: c.limits for name, c in self.credentials.items()},
            latency=self.latency,
            faults={name: c.faults for name, c in self.credentials.items()},
            retry_after_form=self.retry_after_form,
            credential_header=self.credential_header,
            credential_prefix=self.credential_prefix,
            ratelimit_headers=self.ratelimit_headers,
            retry_after_ms=self.retry_after_ms,
            headerless_429=self.headerless_429,
            completion_units=self.completion_units,
            seed=self.seed,
        )
