"""The console in a real browser: Debian's Chromium driven by Playwright (never a downloaded
browser), against a live replica on real sockets in front of the simulated upstream, on a real
Redis. It loads the page, is refused a wrong token, shows every session with its state (one
cooling after real 429s, with a live countdown), disables and reweighs sessions by its buttons,
follows what another operator changed, fits a phone's screen, says so when the replica is gone
or its store is down, and shows every pool a replica serves.

Outside CI the test skips with a reason when Chromium or Playwright is missing; with CI=true it
must run (``.ci/run`` installs ``chromium``; ``playwright`` is in the test extra).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from broker import Session
from proxy.testing import SimulatedUpstream, running_redis
from tests.conftest import required_executable

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

    from proxy.serve import RunningReplica
    from tests.proxy.conftest import StartReplica

pytestmark = pytest.mark.slow

TOKEN = "console-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SESSIONS = [
    Session(id="team-a", secret="secret-team-a", rpm=600, max_concurrency=4),
    Session(id="team-b", secret="secret-team-b", weight=2),
    Session(id="batch", secret="secret-batch", tpm=90_000),
    Session(id="legacy", secret="secret-legacy"),
]
#: Where the test leaves its screenshots besides its tmp dir (to refresh docs/console.png).
SCREENSHOT_DIR = "CONSOLE_SCREENSHOT_DIR"


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Headless Chromium from the system's packages, driven by Playwright."""
    chromium = required_executable("chromium", "the console's browser test")
    try:
        from playwright.async_api import async_playwright
    except ImportError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"playwright is not installed ({exc}); CI=true requires the browser test")
        pytest.skip(f"playwright is not installed: {exc}")
    async with async_playwright() as driver:
        launched = await driver.chromium.launch(executable_path=chromium, headless=True)
        yield launched
        await launched.close()


async def session_state(http: aiohttp.ClientSession, replica: RunningReplica, sid: str) -> str:
    async with http.get(f"{replica.ops_url}/admin/sessions/{sid}", headers=AUTH) as response:
        view: dict[str, Any] = await response.json()
    return str(view["state"])


async def provoke(
    http: aiohttp.ClientSession,
    replica: RunningReplica,
    sim: SimulatedUpstream,
    sid: str,
    answer: tuple[int, dict[str, str]],
    state: str,
) -> None:
    """Make the upstream give one credential this answer, and send requests (the other sessions
    serve them) until the fleet has put its session in ``state``."""
    secret = next(s.secret for s in SESSIONS if s.id == sid)
    sim.force(secret, *answer)
    for _ in range(40):
        body = {"model": "m", "messages": []}
        async with http.post(f"{replica.proxy_url}/v1/chat/completions", json=body) as response:
            await response.read()
        if await session_state(http, replica, sid) == state:
            return
    pytest.fail(f"{sid} never became {state}")


async def sign_in(page: Page, ops_url: str, token: str) -> None:
    await page.goto(f"{ops_url}/ui/")
    await page.fill("#token", token)
    await page.click("#login button[type=submit]")


async def row_state(page: Page, sid: str) -> str:
    return (await page.text_content(f'tr[data-session="{sid}"] .state')) or ""


async def test_console_in_chromium(
    browser: Browser,
    start_replica: StartReplica,
    sim: SimulatedUpstream,
    shared_redis: str,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """Token refused, then every session with its live state, an action, a phone, an outage."""
    replica = await start_replica(
        SESSIONS,
        admin_token=TOKEN,
        redis_url=shared_redis,
        circuit_breaker_threshold=1,
        circuit_breaker_timeout=300,
    )
    await provoke(http, replica, sim, "team-b", (429, {"Retry-After": "600"}), "cooling")
    await provoke(http, replica, sim, "legacy", (503, {}), "open")
    page = await browser.new_page(viewport={"width": 1400, "height": 800})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    failed: list[str] = []
    page.on("console", lambda m: failed.append(m.text) if m.type == "error" else None)

    await sign_in(page, replica.ops_url, "tökén ✓")
    await page.wait_for_selector("#status.error")
    assert "cannot carry" in ((await page.text_content("#status")) or "")
    await sign_in(page, replica.ops_url, "not-the-token-at-all")
    await page.wait_for_function(
        "() => document.querySelector('#status').textContent.includes('refused')"
    )
    assert "token was refused (403)" in ((await page.text_content("#status")) or "")
    assert await page.is_visible("#login")

    await sign_in(page, replica.ops_url, TOKEN)
    await page.wait_for_selector('tr[data-session="legacy"]')
    assert await page.eval_on_selector_all("tbody tr", "rows => rows.length") == len(SESSIONS)
    assert await row_state(page, "team-a") == "available"
    assert await row_state(page, "team-b") == "cooling"
    assert await row_state(page, "batch") == "available"
    assert await row_state(page, "legacy") == "open"
    assert await page.evaluate("sessionStorage.length") == 1
    content = await page.content()
    assert "secret-" not in content
    assert TOKEN not in content
    # The cooldown counts down in the browser, between two refreshes.
    countdown = 'tr[data-session="team-b"] .countdown'
    first = await page.text_content(countdown)
    await page.wait_for_function(
        "([sel, seen]) => document.querySelector(sel).textContent !== seen", arg=[countdown, first]
    )
    # The fleet's figures: this replica alone, and the upstream's 429s as the sessions count them.
    figures = await page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('dl.figures div')]
            .map(d => [d.querySelector('dt').textContent, d.querySelector('dd').textContent]))"""
    )
    async with http.get(f"{replica.ops_url}/admin/sessions", headers=AUTH) as response:
        views = (await response.json())["sessions"]
    limited = sum(view["outcomes"]["rate_limited"] for view in views)
    attempts = sum(sum(view["outcomes"].values()) for view in views)
    assert limited >= 1
    assert figures["Replicas"] == "1 this one"
    assert figures["429s"].split()[0] == str(limited)
    assert figures["Upstream attempts"].split()[0] == str(attempts)
    assert figures["Waiting"] == "0 here 0 replicas waiting"
    assert figures["Available"] == "2/4 1 cooling, 1 open"

    # An action: disable team-a (the reason is asked for), seen in the page and by the fleet.
    page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept("rotating")))
    await page.click('tr[data-session="team-a"] button[data-action="disable"]')
    await page.wait_for_function(
        """() => document.querySelector('tr[data-session="team-a"] .state')
            .textContent === 'disabled'"""
    )
    assert "disabled: rotating" in (
        (await page.text_content('tr[data-session="team-a"] .why')) or ""
    )
    assert await session_state(http, replica, "team-a") == "disabled"
    # Another action: a weight (one that is not a number is refused in the page).
    weight = 'tr[data-session="batch"] button[data-action="weight"]'
    page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept("heavy")))
    await page.click(weight)
    await page.wait_for_selector("#status.error")
    assert 'not "heavy"' in ((await page.text_content("#status")) or "")
    page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept("2.5")))
    await page.click(weight)
    cell = 'tr[data-session="batch"] td[data-label="Weight"]'
    await page.wait_for_function(
        "sel => document.querySelector(sel).textContent === '2.5 (set; configured 1)'", arg=cell
    )
    assert "Session batch reweighed" in ((await page.text_content("#status")) or "")
    await page.screenshot(path=str(tmp_path / "console.png"), full_page=True)
    # What another operator changes shows at the next refresh, without a reload.
    async with http.post(
        f"{replica.ops_url}/admin/sessions/team-b/reset", headers=AUTH
    ) as response:
        assert response.status == 200
    await page.wait_for_function(
        """() => document.querySelector('tr[data-session="team-b"] .state')
            .textContent === 'available'""",
        timeout=10_000,
    )
    assert await page.evaluate("localStorage.length") == 0

    # A phone: one card per session, nothing wider than the screen.
    phone = await browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True)
    await sign_in(phone, replica.ops_url, TOKEN)
    await phone.wait_for_selector('tr[data-session="legacy"]')
    widths = await phone.evaluate(
        """() => ({page: document.documentElement.scrollWidth,
                   body: document.body.scrollWidth,
                   view: document.documentElement.clientWidth,
                   rows: [...document.querySelectorAll('tbody tr')]
                     .map(r => r.getBoundingClientRect().right)})"""
    )
    assert widths["page"] <= widths["view"] == 390, widths
    assert widths["body"] <= widths["view"], widths
    assert all(right <= 390 for right in widths["rows"]), widths
    assert not await phone.is_visible("thead")
    label = await phone.evaluate(
        """() => getComputedStyle(document.querySelector('tbody td'), '::before').content"""
    )
    assert label == '"Session"'
    await phone.screenshot(path=str(tmp_path / "console-phone.png"), full_page=True)
    if os.environ.get(SCREENSHOT_DIR):
        for name in ("console.png", "console-phone.png"):
            target = Path(os.environ[SCREENSHOT_DIR]) / name
            target.write_bytes((tmp_path / name).read_bytes())

    # The replica goes away: the page says it is unreachable, and keeps the last data read.
    await replica.stop()
    await page.wait_for_function(
        "() => document.querySelector('#status').textContent.includes('unreachable')",
        timeout=15_000,
    )
    assert await page.eval_on_selector_all("tbody tr", "rows => rows.length") == len(SESSIONS)
    # No script error; the only failed loads: the wrong token's 403 and the replica gone.
    assert errors == []
    assert failed == [
        "Failed to load resource: the server responded with a status of 403 (Forbidden)",
        "Failed to load resource: net::ERR_CONNECTION_REFUSED",
    ]


async def test_console_shows_every_pool_and_a_store_outage(
    browser: Browser,
    start_replica: StartReplica,
    redis_executable: str,
    tmp_path: Path,
) -> None:
    """A replica serving two pools shows both, each with its sessions; when its Redis stops, the
    page says the store is unavailable, in the admin API's words."""
    document = {
        "default_pool": "chat",
        "pools": {
            "chat": {"sessions": [{"id": "p1", "secret": "secret-p1"}], "fallback": "cheap"},
            "cheap": {
                "sessions": [
                    {"id": "c1", "secret": "secret-c1"},
                    {"id": "c2", "secret": "secret-c2"},
                ]
            },
        },
    }
    path = tmp_path / "sessions.json"
    path.write_text(json.dumps(document))
    with running_redis(executable=redis_executable, directory=tmp_path / "redis") as server:
        replica = await start_replica(
            None, admin_token=TOKEN, redis_url=server.url, sessions_file=str(path)
        )
        page = await browser.new_page()
        await sign_in(page, replica.ops_url, TOKEN)
        await page.wait_for_selector('section[data-pool="cheap"] tr[data-session="c2"]')
        rows = await page.evaluate(
            """() => Object.fromEntries([...document.querySelectorAll('section.pool')].map(
                s => [s.dataset.pool,
                      [...s.querySelectorAll('tbody tr')].map(r => r.dataset.session)]))"""
        )
        assert rows == {"chat": ["p1"], "cheap": ["c1", "c2"]}
        heads = await page.eval_on_selector_all(".pool-head", "hs => hs.map(h => h.textContent)")
        assert any("Pool chat" in h and "falls back to cheap" in h for h in heads), heads
    await page.wait_for_function(
        "() => document.querySelector('#status').textContent.includes('store_unavailable')",
        timeout=20_000,
    )
    assert "503" in ((await page.text_content("#status")) or "")
