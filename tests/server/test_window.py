"""The window ``/ipyllm/api/usage`` reads: ISO 8601 times as people type them into a URL, ``today`` and ``month``."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from ipyllm._server import BadParameterError, usage_window

NOW = datetime(2026, 12, 4, 10, 30, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-12-04T09:00:00+01:00", datetime(2026, 12, 4, 8, 0, tzinfo=timezone.utc)),
        ("2026-12-04T09:00:00 01:00", datetime(2026, 12, 4, 8, 0, tzinfo=timezone.utc)),  # an unencoded "+" is a space
        ("2026-12-04T08:00:00Z", datetime(2026, 12, 4, 8, 0, tzinfo=timezone.utc)),
        ("2026-12-04T08:00:00.250000-05:30", datetime(2026, 12, 4, 13, 30, 0, 250000, tzinfo=timezone.utc)),
    ],
)
def test_times_with_an_offset_are_read_as_given(text: str, expected: datetime) -> None:
    since, until = usage_window(text, None, NOW)
    assert since == expected and until is None


def test_a_time_without_an_offset_is_local_and_today_and_month_start_at_local_midnight() -> None:
    since, until = usage_window("today", "2030-01-01T00:00:00", NOW)
    midnight = datetime.now().astimezone().replace(hour=0, minute=0, second=0, microsecond=0)
    assert since == midnight and since.utcoffset() == midnight.utcoffset()
    assert until == datetime(2030, 1, 1).astimezone()
    month, _ = usage_window("month", None, NOW)
    assert month == midnight.replace(day=1) and month <= since < month + timedelta(days=31)


@pytest.mark.parametrize("text", ["yesterday", "", "12/04/2026", "2026-12-04T25:00"])
def test_anything_else_is_refused_in_one_line(text: str) -> None:
    with pytest.raises(BadParameterError, match=r"^since must be an ISO 8601 time such as 2026-12-04T10:30:00\+00:00, or today or month"):
        usage_window(text, None, NOW)
