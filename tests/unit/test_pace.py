"""A batch's pace: one pause per rate-limit storm, however late its 429s come back.

In isolation, on a clock the test moves; ``tests/batch/test_map.py`` runs the same over real HTTP.
"""

from __future__ import annotations

import asyncio

import pytest

from ipyllm import _pace
from ipyllm._pace import Pace
from ipyllm._progress import Tally


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(_pace.time, "monotonic", clock)
    return clock


def test_a_late_429_to_a_request_sent_before_the_pause_is_the_same_pause(clock: Clock) -> None:
    pace = Pace(8, Tally(total=24))
    sent = clock.now
    clock.now += 0.01
    pace.rate_limited(1.0, sent_at=sent)  # the first 429 of a storm of 8
    assert (pace.tally.pauses, pace.window) == (1, 4.0)
    clock.now += 1.2  # the last of the 8 comes back after the pause is over (a busy machine)
    pace.rate_limited(1.0, sent_at=sent)
    assert (pace.tally.pauses, pace.window) == (1, 4.0)
    assert pace.resume_at == pytest.approx(clock.now + 1.0)  # it still lengthens the wait


def test_a_429_to_a_request_sent_after_the_pause_is_a_new_pause(clock: Clock) -> None:
    pace = Pace(8, Tally(total=24))
    pace.rate_limited(1.0, sent_at=clock.now - 0.01)
    clock.now += 1.1
    sent = clock.now
    clock.now += 0.01
    pace.rate_limited(1.0, sent_at=sent)
    assert (pace.tally.pauses, pace.window) == (2, 2.0)


def test_429s_during_a_pause_are_that_pause(clock: Clock) -> None:
    pace = Pace(8, Tally(total=24))
    for _ in range(8):
        pace.rate_limited(1.0, sent_at=clock.now)
        clock.now += 0.05
    assert (pace.tally.pauses, pace.window) == (1, 4.0)


def test_an_attempt_notes_when_it_went_out(clock: Clock) -> None:
    pace = Pace(2, Tally(total=1))
    sent = [0.0]

    async def one() -> None:
        async with pace.attempt(sent):
            assert pace.in_flight == 1

    asyncio.run(one())
    assert sent == [clock.now] and pace.in_flight == 0
