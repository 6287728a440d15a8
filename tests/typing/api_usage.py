"""Public-API usage that must type-check under mypy --strict (checked by .ci/run, never executed)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import sdk


@sdk.tool
def plain(x: int) -> str:
    return str(x)


@sdk.tool(capture=True)
def captured(secret: str) -> str:
    return secret


@sdk.agent("named")
async def coroutine(x: int) -> int:
    return x


@sdk.task(name="gen", attributes={"k": "v"})
def generator(n: int) -> Iterator[int]:
    yield from range(n)


@sdk.workflow()
async def agen() -> AsyncIterator[str]:
    yield "x"


@sdk.session
def in_session() -> bool:
    return True


@sdk.session("named", tags=["t"])
async def in_named_session() -> None:
    return None


async def use() -> None:
    config: sdk.Config = sdk.init(service_name="typed", auto_start_session=True)
    assert config.service_name == "typed"
    text: str = plain(1)
    number: int = await coroutine(2)
    values: list[int] = list(generator(3))
    items: list[str] = [item async for item in agen()]
    flag: bool = in_session()
    await in_named_session()
    with sdk.session("s", user_id="u", tags=["a"]) as s:
        sid: str = s.id
        state: sdk.SessionState = s.state
        s.set_tag("b")
        sdk.event("e", n=1)
    async with sdk.session() as s2:
        s2.end("fail", reason="why")
    manual: sdk.Session = sdk.start_session("m")
    sdk.end_session(manual, state=sdk.SessionState.INDETERMINATE)
    current: sdk.Session | None = sdk.current_session()
    resumed: sdk.Session = sdk.start_session("chat", session_id="conv-1", resume=True)
    usage: sdk.Usage = resumed.usage
    segment: int = resumed.segment
    resumed.add_llm_usage(input_tokens=1, output_tokens=2, cost_usd=0.001)
    with sdk.session("chat", session_id="conv-1", resume=True):
        pass
    open_now: list[sdk.SessionInfo] = sdk.sessions()
    stale: list[sdk.SessionRecord] = sdk.sessions(stale=True)
    for record in stale:
        sdk.end_session(record.id, "indeterminate", "stale")
    print(usage.cost_usd, segment, open_now, [r.trace_id for r in stale])
    budget = sdk.Budget(max_cost_usd=0.5, max_llm_calls=20, max_repeats=3, on_exceed="warn")
    with sdk.session("capped", budget=budget) as capped:
        spent: float = capped.spent().cost_usd
        limit: sdk.Budget | None = capped.budget
    try:
        capped.check_budget()
    except sdk.BudgetExceeded as exceeded:
        print(exceeded.limit, exceeded.maximum, exceeded.used, exceeded.session)
    given: sdk.Score = sdk.score(capped, "helpfulness", 0.9, comment="thanks", source="user")
    sdk.score("conv-1", "resolved", True)
    sdk.init(
        session_budget=budget, on_budget_exceeded=lambda session, error: None, accept_session_from="loopback"
    )
    with sdk.session(
        "handle", parent={"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}, peer="127.0.0.1"
    ):
        pass
    print(spent, limit, given.value)
    stats: sdk.Stats = sdk.stats()
    explained: list[tuple[str, str, str]] = sdk.config().explain()
    ok: bool = sdk.flush(timeout=1.0)
    sdk.init(capture_content=True, instrument=["openai"], redact_patterns=["builtin", r"\d{16}"])
    sdk.uninstrument("anthropic")
    sdk.uninstrument()
    sdk.shutdown()
    print(text, number, values, items, flag, sid, state, current, stats, explained, ok)
