"""Logging: structlog, JSON lines in production or readable lines in a terminal.

Per-request context (the ``request_id``) is bound with ``structlog.contextvars`` so it appears on
every line logged while that request is handled. The standard library's loggers (aiohttp, redis,
asyncio) go through the same processors, so they too come out as structured lines.

Redaction: every secret the process holds (sessions' secrets, client API keys, the admin token,
Redis passwords, the webhook URL) is registered with ``REDACTOR``; every line, at every level and
from every logger, has them replaced by ``[redacted]`` twice over: in the event's values before
rendering, and in the rendered text (in its raw, JSON-escaped and repr-escaped forms) after it.

Anyone who can reach a port can make a line be logged, so what a client can cause is bounded:
client mistakes and protocol errors (malformed HTTP, a client hanging up mid-body, a body that
never comes) are one WARNING line each, without a traceback, and at most ``LogBudget.PER_WINDOW``
lines of a kind are written per ``LogBudget.WINDOW_S``; the next line written says how many were
left out (``suppressed``). The HTTP server's own "Error handling request" tracebacks are turned
into such lines when their cause is the client's (``ProtocolErrorFilter``). A failure of the
proxy's own (a bug) keeps its ERROR and traceback, under the same budget.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, Literal, TextIO

import structlog
from aiohttp import http_exceptions
from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = [
    "CLIENT_MISTAKES",
    "REDACTED",
    "REDACTOR",
    "LogBudget",
    "ProtocolErrorFilter",
    "Redactor",
    "client_mistake",
    "configure_logging",
    "proxy_fault",
]

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


class LogBudget:
    """How many lines of each kind may be written: ``PER_WINDOW`` per ``WINDOW_S`` seconds."""

    #: Enough to see what is going on; few enough that a flood costs nothing.
    PER_WINDOW = 10
    WINDOW_S = 10.0

    def __init__(
        self,
        per_window: int = PER_WINDOW,
        window_s: float = WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._per_window = per_window
        self._window_s = window_s
        self._clock = clock
        #: kind -> [window start, lines written in it, lines left out since the last written]
        self._kinds: dict[str, list[float]] = {}

    def clear(self) -> None:
        """Forget every count: a new logging configuration starts with a whole budget."""
        self._kinds.clear()

    def take(self, kind: str) -> int | None:
        """None: this line is over the budget, leave it out. Else write it, with the count of
        lines of its kind left out since the last one written."""
        now = self._clock()
        entry = self._kinds.setdefault(kind, [now, 0, 0])
        if now - entry[0] >= self._window_s:
            entry[0], entry[1] = now, 0
        if entry[1] >= self._per_window:
            entry[2] += 1
            return None
        entry[1] += 1
        suppressed, entry[2] = int(entry[2]), 0
        return suppressed


#: The budget of every line a client can cause: its kinds are event names and exception classes.
CLIENT_MISTAKES = LogBudget()

_log = structlog.get_logger("proxy.clients")


def client_mistake(event: str, **fields: Any) -> None:
    """One WARNING line, without a traceback, for something a client did wrong; rate-limited."""
    suppressed = CLIENT_MISTAKES.take(event)
    if suppressed is None:
        return
    if suppressed:
        fields["suppressed"] = suppressed
    _log.warning(event, **fields)


def proxy_fault(event: str, exc: BaseException, **fields: Any) -> None:
    """An ERROR line with the traceback, for a failure of the proxy's own that a client's request
    ran into; rate-limited like a client's mistakes, since a client can repeat the request."""
    suppressed = CLIENT_MISTAKES.take(f"{event}: {type(exc).__name__}")
    if suppressed is None:
        return
    if suppressed:
        fields["suppressed"] = suppressed
    _log.error(event, exc_info=exc, **fields)


#: Errors that are the client's doing: malformed HTTP (every parser error), a client gone.
_CLIENT_CAUSED: tuple[type[BaseException], ...] = (
    http_exceptions.HttpProcessingError,
    ConnectionError,  # ConnectionResetError, BrokenPipeError and aiohttp's own resets
    asyncio.IncompleteReadError,
)


#: The HTTP server's loggers (aiohttp.log's server_logger and web_logger).
_SERVER_LOGGERS = frozenset({"aiohttp.server", "aiohttp.web"})


def _client_caused(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an error it was raised from, is the client's doing."""
    seen = 0
    while exc is not None and seen < 10:  # a chain is short; a loop in it must not hang
        if isinstance(exc, _CLIENT_CAUSED):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


class ProtocolErrorFilter(logging.Filter):
    """Turns the HTTP server's "Error handling request" ERROR-with-traceback, when a client
    caused it, into one WARNING line without a traceback, under the ``CLIENT_MISTAKES`` budget;
    lines under ``level`` are then left out."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self._level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name not in _SERVER_LOGGERS or record.exc_info is None:
            return True
        exc = record.exc_info[1]
        if not _client_caused(exc):
            return True
        kind = type(exc).__name__
        suppressed = CLIENT_MISTAKES.take(f"protocol error: {kind}")
        if suppressed is None or self._level > logging.WARNING:
            return False
        # A parser error's own message is on its first non-empty line; its str() starts with
        # the status code alone.
        text = str(getattr(exc, "message", None) or exc)
        message = next((line.strip() for line in text.splitlines() if line.strip()), kind)[:200]
        record.msg = "protocol error from a client: %s: %s" + (
            f" ({suppressed} similar left out)" if suppressed else ""
        )
        record.args = (kind, message)
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


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
    CLIENT_MISTAKES.clear()
    handler = logging.StreamHandler(out)
    handler.addFilter(ProtocolErrorFilter(numeric))
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
