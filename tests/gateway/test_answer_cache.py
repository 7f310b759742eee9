"""AnswerCache: one fetch per question and period, shared by concurrent askers; errors about
the request kept, "no instance answered" not; bounded."""

from __future__ import annotations

import asyncio

import pytest

from gateway import answer_cache
from gateway.answer_cache import AnswerCache
from gateway.errors import ModelNotFound, Unavailable


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Counting:
    def __init__(self, answer: object = "meta", delay_s: float = 0.0) -> None:
        self.calls = 0
        self.answer, self.delay_s = answer, delay_s

    async def __call__(self) -> object:
        self.calls += 1
        await asyncio.sleep(self.delay_s)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


async def test_concurrent_askers_share_one_fetch_and_the_answer_is_kept_for_the_period() -> None:
    clock, fetch = Clock(), Counting(delay_s=0.01)
    cache: AnswerCache[object] = AnswerCache(1.0, clock)
    answers = await asyncio.gather(*(cache.get("q", fetch) for _ in range(50)))
    assert answers == ["meta"] * 50 and fetch.calls == 1
    clock.now = 0.9
    assert await cache.get("q", fetch) == "meta" and fetch.calls == 1
    assert await cache.get("other", fetch) == "meta" and fetch.calls == 2  # another question
    clock.now = 1.1
    assert await cache.get("q", fetch) == "meta" and fetch.calls == 3  # expired: asked again


async def test_an_answer_about_the_request_is_kept_but_no_instance_answered_is_not() -> None:
    cache: AnswerCache[object] = AnswerCache(1.0, Clock())
    missing = Counting(ModelNotFound("version 9 not found"))
    for _ in range(3):
        with pytest.raises(ModelNotFound, match="version 9"):
            await cache.get("v9", missing)
    assert missing.calls == 1
    down = Counting(Unavailable("no instance answered"))
    for _ in range(3):
        with pytest.raises(Unavailable):
            await cache.get("down", down)
    assert down.calls == 3


async def test_an_asker_that_goes_away_leaves_the_answer_to_the_others() -> None:
    cache: AnswerCache[object] = AnswerCache(1.0, Clock())
    fetch = Counting(delay_s=0.05)
    first = asyncio.ensure_future(cache.get("q", fetch))
    second = asyncio.ensure_future(cache.get("q", fetch))
    await asyncio.sleep(0.01)
    first.cancel()
    assert await second == "meta" and fetch.calls == 1
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_the_questions_kept_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(answer_cache, "MAX_ENTRIES", 4)
    cache: AnswerCache[object] = AnswerCache(60.0, Clock())
    fetch = Counting()
    for k in range(10):
        await cache.get(k, fetch)
    assert len(cache._entries) == 4 and fetch.calls == 10
    await cache.get(9, fetch)  # the newest is kept
    assert fetch.calls == 10
    await cache.get(0, fetch)  # the oldest went
    assert fetch.calls == 11
