"""Logging: structlog, JSON lines in production or readable lines in a terminal.

Per-request context (the ``request_id``) is bound with ``structlog.contextvars`` so it appears on
every line logged while that request is handled. The standard library's loggers (aiohttp, redis,
asyncio) go through the same processors, so they too come out as structured lines.

Redaction: every secret the process holds (sessions' secrets, client API keys, the admin token,
Redis passwords, the webhook URL) is registered with ``REDACTOR``; every line, at every level and
from every logger, has them replaced by ``[redacted]`` twice over: in the event's values before
rendering, and in the rendered text (in its raw, JSON-escaped and repr-escaped forms) after it.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable
from typing import Any, Literal, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = ["REDACTED", "REDACTOR", "Redactor", "configure_logging"]

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
REDACTED = "[redacted]"


class Redactor:
    """Replaces registered secrets in log events and lines. Secrets are only ever added."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None

    def add(self, secrets: Iterable[str | None]) -> None:
        new = {s for s in secrets if s} - self._secrets
        if not new:
            return
        self._secrets |= new
        forms = set()
        for secret in self._secrets:
            # As rendered: raw, escaped inside a JSON string, escaped inside a Python repr.
            forms |= {secret, json.dumps(secret)[1:-1], repr(secret)[1:-1]}
        # Longest first, so a secret that contains another is replaced whole.
        alternatives = sorted(forms, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, alternatives)))

    def text(self, value: str) -> str:
        return value if self._pattern is None else self._pattern.sub(REDACTED, value)

    def value(self, value: Any) -> Any:
        """``value`` with secrets replaced; containers walked, other objects checked as text."""
        if self._pattern is None or value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.value(k): self.value(v) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self.value(v) for v in value]
        shown = str(value)
        return value if self._pattern.search(shown) is None else self.text(shown)

    def event(self, logger: WrappedLogger, name: str, event_dict: EventDict) -> EventDict:
        """structlog processor, before the renderer."""
        redacted: EventDict = self.value(event_dict)
        return redacted

    def rendered(self, logger: WrappedLogger, name: str, line: Any) -> Any:
        """structlog processor, after the renderer: the line as it will be written."""
        if isinstance(line, str):
            return self.text(line)
        if isinstance(line, bytes):
            return self.text(line.decode("utf-8", "replace")).encode()
        return line


#: The process's redactor: replicas and commands register their secrets with it.
REDACTOR = Redactor()


def configure_logging(
    level: str,
    fmt: Literal["json", "console"],
    *,
    stream: TextIO | None = None,
    cache: bool = True,
) -> None:
    """Configure structlog and the standard library's logging to write to ``stream`` (stderr)."""
    out = stream or sys.stderr
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    numeric = _LEVELS.get(level, logging.ERROR)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            REDACTOR.event,
            renderer,
            REDACTOR.rendered,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=cache,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                REDACTOR.event,
                renderer,
                REDACTOR.rendered,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(numeric)
