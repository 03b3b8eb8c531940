"""Backoff schedule, jitter, give-up age and Retry-After parsing."""
from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest

from services.retry import RetryPolicy, parse_age, parse_duration, parse_retry_after, parse_schedule

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)


class EdgeRng:
    """A random source that always draws the lowest or the highest allowed value."""

    def __init__(self, pick_high: bool):
        self.pick_high = pick_high

    def uniform(self, low: float, high: float) -> float:
        """Return one end of the interval."""
        return high if self.pick_high else low


@pytest.mark.parametrize("text, seconds", [
    ("5s", 5.0), ("1m", 60.0), ("30m", 1800.0), ("2h", 7200.0), ("3d", 259200.0),
    ("250ms", 0.25), ("90", 90.0), (" 2H ", 7200.0), ("1.5m", 90.0), ("0s", 0.0),
])
def test_parse_duration_reads_units(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "5x", "-5s", "5 s 3", "1m30s", "five"])
def test_parse_duration_rejects_garbage(text):
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize("text, delays", [
    ("5s,1m,5m,30m,2h,5h", (5.0, 60.0, 300.0, 1800.0, 7200.0, 18000.0)),
    ("10s", (10.0,)),
    (" 1s , 2s ,", (1.0, 2.0)),
    ("5,60", (5.0, 60.0)),  # a bare number is seconds, as it always was
])
def test_parse_schedule_reads_each_delay(text, delays):
    assert parse_schedule(text) == delays


@pytest.mark.parametrize("text", ["", " , ", "5s,oops", "5s,400d"])
def test_parse_schedule_rejects_empty_or_invalid(text):
    with pytest.raises(ValueError):
        parse_schedule(text)


def test_default_policy_is_the_documented_schedule():
    policy = RetryPolicy()

    assert policy.delays == (5.0, 60.0, 300.0, 1800.0, 7200.0, 18000.0)
    assert policy.max_age == 3 * 86400
    assert policy.jitter == 0.2


@pytest.mark.parametrize("attempt, base", [
    (1, 5.0), (2, 60.0), (3, 300.0), (4, 1800.0), (5, 7200.0), (6, 18000.0),
    (7, 18000.0), (40, 18000.0),
])
def test_next_delay_follows_schedule_then_repeats_last(attempt, base):
    policy = RetryPolicy.from_config("5s,1m,5m,30m,2h,5h", jitter=0.2)

    assert policy.next_delay(attempt, EdgeRng(pick_high=False)) == pytest.approx(base * 0.8)
    assert policy.next_delay(attempt, EdgeRng(pick_high=True)) == pytest.approx(base * 1.2)


def test_next_delay_stays_within_jitter_bounds_and_varies():
    policy = RetryPolicy.from_config("1m", jitter=0.2)
    rng = random.Random(42)

    delays = [policy.next_delay(1, rng) for _ in range(500)]

    assert all(48.0 <= delay <= 72.0 for delay in delays)
    assert max(delays) - min(delays) > 10.0


def test_next_delay_without_jitter_is_exact():
    policy = RetryPolicy.from_config("7s", jitter=0)

    assert policy.next_delay(3, random.Random(1)) == 7.0


@pytest.mark.parametrize("attempt", [0, -1])
def test_next_delay_rejects_attempts_below_one(attempt):
    with pytest.raises(ValueError):
        RetryPolicy().next_delay(attempt, random.Random(1))


@pytest.mark.parametrize("kwargs", [{"jitter": 1.0}, {"jitter": -0.1}, {"max_age": "0s"}, {"max_age": "30"},
                                    {"schedule": "5s,oops"}])
def test_policy_rejects_nonsensical_settings(kwargs):
    with pytest.raises(ValueError):
        RetryPolicy.from_config(**kwargs)


@pytest.mark.parametrize("age, exhausted", [
    (timedelta(0), False),
    (timedelta(days=3) - timedelta(seconds=1), False),
    (timedelta(days=3), True),
    (timedelta(days=10), True),
])
def test_is_exhausted_after_max_age(age, exhausted):
    policy = RetryPolicy.from_config(max_age="3d")

    assert policy.is_exhausted(NOW - age, NOW) is exhausted


def test_is_exhausted_accepts_naive_utc_from_the_database():
    policy = RetryPolicy.from_config(max_age="1h")
    first_attempt_naive = (NOW - timedelta(hours=2)).replace(tzinfo=None)

    assert policy.is_exhausted(first_attempt_naive, NOW) is True


@pytest.mark.parametrize("retry_after, expected", [
    (30.0, 30.0),
    (0.0, 5.0),  # "retry now" never beats the schedule: no hot loop against a struggling server
    (4.0, 5.0),
    (10 * 86400.0, 3 * 86400.0),
])
def test_delay_for_lengthens_the_schedule_to_retry_after_capped_at_max_age(retry_after, expected):
    policy = RetryPolicy.from_config("5s", max_age="3d", jitter=0)

    assert policy.delay_for(1, retry_after, random.Random(1)) == expected


def test_delay_for_falls_back_to_schedule():
    policy = RetryPolicy.from_config("5s", jitter=0)

    assert policy.delay_for(1, None, random.Random(1)) == 5.0


@pytest.mark.parametrize("value, expected", [
    ("120", 120.0),
    (" 7 ", 7.0),
    ("0", 0.0),
    (format_datetime(NOW + timedelta(seconds=90), usegmt=True), 90.0),
    ("Wed, 01 May 2024 12:05:00 GMT", 300.0),
    ("Wednesday, 01-May-24 12:00:30 GMT", 30.0),
    ("Wed May  1 12:01:00 2024", 60.0),
    ("Wed, 01 May 2024 11:00:00 GMT", 0.0),
    (None, None),
    ("", None),
    ("soon", None),
    ("-5", None),
    ("1.5", None),
])
def test_parse_retry_after_reads_seconds_and_http_dates(value, expected):
    assert parse_retry_after(value, NOW) == expected


def test_parse_retry_after_accepts_naive_utc_now():
    assert parse_retry_after("Wed, 01 May 2024 12:00:10 GMT", NOW.replace(tzinfo=None)) == 10.0


@pytest.mark.parametrize("text, seconds", [("30d", 30 * 86400), ("12h", 43200), ("1.5h", 5400), (" 90s ", 90)])
def test_an_age_is_read_with_its_unit(text, seconds):
    assert parse_age(text) == seconds


@pytest.mark.parametrize("text", ["30", "30.0", "1.5", "20260101", "soon", ""])
def test_an_age_without_its_unit_is_refused(text):
    with pytest.raises(ValueError, match="with its unit"):
        parse_age(text)
