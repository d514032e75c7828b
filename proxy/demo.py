"""``session-broker demo``: the broker and proxy at work on this machine, nothing else needed.

A simulated upstream allows each of four sessions 60 requests a minute with a burst of 3 and
answers 429 with Retry-After beyond that. A replica on the embedded store proxies to it; polite
clients (they wait as Retry-After says) drive traffic; a summary shows what happened.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import aiohttp
from aiohttp import web

from broker import Session
from proxy.config.settings import Settings
from proxy.replica.replica import Replica
from proxy.serve import start
from proxy.testing import Limits, SimulatedUpstream

DEMO_LIMITS = Limits(rpm=60, burst=3)
#: The broker knows the quota of the first two sessions; it learns the others' from 429s.
DEMO_SESSIONS = [
    Session(id="demo-1", secret="demo-secret-1", rpm=DEMO_LIMITS.rpm, burst=DEMO_LIMITS.burst),
    Session(id="demo-2", secret="demo-secret-2", rpm=DEMO_LIMITS.rpm, burst=DEMO_LIMITS.burst),
    Session(id="demo-3", secret="demo-secret-3"),
    Session(id="demo-4", secret="demo-secret-4"),
]


async def _client(proxy_url: str, deadline: float, statuses: Counter[int]) -> None:
    body = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            async with http.post(f"{proxy_url}/v1/chat/completions", json=body) as response:
                await response.read()
                statuses[response.status] += 1
                wait = (
                    float(response.headers.get("Retry-After", 0)) if response.status >= 429 else 0
                )
            await asyncio.sleep(min(wait, max(0.0, deadline - time.monotonic())))


async def _demo(seconds: float, concurrency: int) -> dict[str, object]:
    upstream = SimulatedUpstream(limits={s.secret: DEMO_LIMITS for s in DEMO_SESSIONS})
    upstream_runner = web.AppRunner(upstream.app(), access_log=None)
    await upstream_runner.setup()
    await web.TCPSite(upstream_runner, "127.0.0.1", 0).start()
    upstream_port = upstream_runner.addresses[0][1]
    settings = Settings(
        upstream_url=f"http://127.0.0.1:{upstream_port}",
        listen="127.0.0.1:0",
        admin_listen="127.0.0.1:0",
        rate_limit_cooldown=1.0,
        shutdown_grace=5.0,
    )
    running = await start(Replica(settings, DEMO_SESSIONS))
    await running.replica.synced.wait()
    statuses: Counter[int] = Counter()
    deadline = time.monotonic() + seconds
    await asyncio.gather(
        *(_client(running.proxy_url, deadline, statuses) for _ in range(concurrency))
    )
    await running.stop()
    await upstream_runner.cleanup()
    by_session = {s.id: upstream.stats.get(s.secret) for s in DEMO_SESSIONS}
    return {"statuses": statuses, "upstream": by_session}


def run_demo(*, seconds: float, concurrency: int) -> int:
    print(
        f"session-broker demo: {len(DEMO_SESSIONS)} sessions, each allowed {DEMO_LIMITS.rpm:g} "
        f"requests/min (burst {DEMO_LIMITS.burst}) by a simulated upstream;\n"
        f"{concurrency} clients for {seconds:g} s through one replica on the embedded store "
        "(no Redis needed)...\n"
    )
    result = asyncio.run(_demo(seconds, concurrency))
    statuses: Counter[int] = result["statuses"]  # type: ignore[assignment]
    upstream = result["upstream"]
    total = statuses.total()
    print(f"client requests: {total}")
    for status, count in sorted(statuses.items()):
        print(f"  HTTP {status}: {count}")
    print("\nupstream attempts per session (what the upstream saw):")
    print(f"  {'session':<10} {'200':>6} {'429':>6} {'share of 200s':>14}")
    successes = sum(s.statuses[200] for s in upstream.values() if s)  # type: ignore[attr-defined]
    for session_id, stats in upstream.items():  # type: ignore[attr-defined]
        ok = stats.statuses[200] if stats else 0
        limited = stats.statuses[429] if stats else 0
        share = f"{100 * ok / successes:.0f}%" if successes else "-"
        print(f"  {session_id:<10} {ok:>6} {limited:>6} {share:>14}")
    wasted = sum(s.statuses[429] for s in upstream.values() if s)  # type: ignore[attr-defined]
    print(
        f"\nupstream 429s: {wasted}. demo-1 and demo-2 carry their rpm quota in the sessions "
        "file,\nso the broker spaces their requests and the upstream never refuses them; "
        "demo-3 and\ndemo-4 do not, so each of their 429s starts a cooldown every replica "
        "honours. With\nall sessions busy, clients got 429 + Retry-After from the proxy instead."
    )
    return 0 if statuses[200] > 0 else 1
