"""What the simulated upstream answers once a request is admitted: an OpenAI-shaped chat
completion and its ``usage``, and server-sent events (a stream's last event carrying the usage)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping

from aiohttp import web

from proxy.request.estimate import prompt_units, requested_max_units

__all__ = ["DEFAULT_COMPLETION_UNITS", "chat_completion", "send_events", "usage_of"]

#: The completion tokens a chat completion reports when its request set no ``max_tokens``.
DEFAULT_COMPLETION_UNITS = 16


def usage_of(body: bytes, completion_units: int | None) -> dict[str, int]:
    """What a chat completion reports consumed: the body as prompt, ``completion_units`` (at
    most the body's ``max_tokens``) as completion, or without it the ``max_tokens`` (else
    ``DEFAULT_COMPLETION_UNITS``): then equal to the estimate when the body sets one."""
    prompt = prompt_units(body)
    requested = requested_max_units(body)
    if completion_units is not None:
        completion = completion_units if requested is None else min(completion_units, requested)
    else:
        completion = DEFAULT_COMPLETION_UNITS if requested is None else requested
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def chat_completion(payload: Mapping[str, object], usage: Mapping[str, int]) -> dict[str, object]:
    """An OpenAI-shaped chat completion answering ``payload``."""
    return {
        "id": "chatcmpl-sim",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": payload.get("model", "sim"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "ok"},
                "finish_reason": "stop",
            }
        ],
        "usage": dict(usage),
    }


async def send_events(
    request: web.Request,
    *,
    count: int,
    interval_s: float,
    usage: Mapping[str, int] | None = None,
) -> web.StreamResponse:
    """``count`` events, then ``usage`` in a last one as OpenAI sends it with
    ``stream_options.include_usage`` (an empty ``choices``), then ``[DONE]``."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for index in range(count):
        event = {"choices": [{"index": 0, "delta": {"content": f"chunk {index}"}}]}
        await response.write(f"data: {json.dumps(event)}\n\n".encode())
        await asyncio.sleep(interval_s)
    if usage is not None:
        last = {"choices": [], "usage": dict(usage)}
        await response.write(f"data: {json.dumps(last)}\n\n".encode())
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response
