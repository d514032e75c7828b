"""401/403 judged on evidence (lua/release.lua): one refusal makes a session suspect; the same
request succeeding elsewhere, or a second refusal that the request cannot explain, disables it
fleet-wide with its alert; a refusal two sessions give is the request's answer."""

from __future__ import annotations

import pytest

from broker import Outcome, Pool, Session
from broker.alerts import AlertRules, check_alerts

TWO = [Session(id="a", secret="x"), Session(id="b", secret="y")]
CHAT, FILES = "kind-chat", "kind-files"


async def refuse(pool: Pool, session_id: str, kind: str, refused_by: str = "") -> None:
    lease = await pool.acquire(exclude=[s.id for s in TWO if s.id != session_id])
    await pool.release(lease, Outcome.AUTH, detail="403", request_kind=kind, refused_by=refused_by)


async def succeed(pool: Pool, session_id: str, kind: str, refused_by: str = "") -> None:
    lease = await pool.acquire(exclude=[s.id for s in TWO if s.id != session_id])
    await pool.release(lease, Outcome.SUCCESS, request_kind=kind, refused_by=refused_by)


async def state_of(pool: Pool, session_id: str) -> tuple[str, str | None]:
    state = await pool.session_state(session_id)
    return state["state"], state.get("disabled_reason")


async def test_one_refusal_makes_a_suspect_not_a_disable(make_pool) -> None:
    """A single 401/403 leaves the session enabled and available: only suspect."""
    pool = await make_pool(TWO)
    await refuse(pool, "a", CHAT)
    state = await pool.session_state("a")
    assert (state["state"], state.get("disabled_reason")) == ("available", None)
    assert state["auth_suspect_kind"] == CHAT


async def test_the_same_request_succeeding_elsewhere_disables_with_alert(make_pool) -> None:
    """A request refused by a and then served by b is a's credential's fault: a is disabled
    after one request, fleet-wide, and its auth alert fires."""
    pool = await make_pool(TWO)
    await refuse(pool, "a", CHAT)
    await succeed(pool, "b", CHAT, refused_by="a")
    assert await state_of(pool, "a") == ("disabled", "auth")
    other = await make_pool(TWO)
    assert (await other.acquire()).session_id == "b"
    changes = await check_alerts(
        pool, AlertRules(error_rate=0.5, window_ms=60_000), attempts=0, errors=0
    )
    assert [(c.name, c.status) for c in changes] == [("auth:a", "firing")]


async def test_a_request_two_sessions_refuse_disables_neither(make_pool) -> None:
    """A refusal the second session gives too is the request's answer: both stay enabled and
    the first one's suspicion is cleared."""
    pool = await make_pool(TWO)
    await refuse(pool, "a", CHAT)
    await refuse(pool, "b", CHAT, refused_by="a")
    for session_id in ("a", "b"):
        state = await pool.session_state(session_id)
        assert state.get("disabled_reason") is None
        assert "auth_suspect_at" not in state


async def test_a_second_refusal_of_another_kind_disables(make_pool) -> None:
    """A suspect refused again on another kind of request is disabled: two requests at most."""
    pool = await make_pool(TWO)
    await refuse(pool, "a", CHAT)
    await refuse(pool, "a", FILES)
    assert await state_of(pool, "a") == ("disabled", "auth")


@pytest.mark.parametrize("others_served", [True, False], ids=["others-served", "nobody-served"])
async def test_a_second_refusal_of_the_same_kind(make_pool, others_served: bool) -> None:
    """A suspect refused again on the same kind is disabled if another session succeeded on
    that kind meanwhile; otherwise it stays a suspect (the kind may be refused to everyone)."""
    pool = await make_pool(TWO)
    await refuse(pool, "a", CHAT)
    if others_served:
        await succeed(pool, "b", CHAT)
    await refuse(pool, "a", CHAT)
    expected = ("disabled", "auth") if others_served else ("available", None)
    assert await state_of(pool, "a") == expected


async def test_a_success_clears_the_suspicion(make_pool) -> None:
    """A suspect that serves a request is trusted again: a later refusal starts over."""
    pool = await make_pool(TWO)
    await refuse(pool, "a", CHAT)
    await succeed(pool, "a", FILES)
    assert "auth_suspect_at" not in await pool.session_state("a")
    await refuse(pool, "a", FILES)
    assert await state_of(pool, "a") == ("available", None)
