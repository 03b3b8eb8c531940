"""When to try a failed Emarsys callback again, and when to give up on it."""
from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

DEFAULT_SCHEDULE = "5s,1m,5m,30m,2h,5h"
DEFAULT_MAX_AGE = "3d"
DEFAULT_JITTER = 0.2
MAX_RETRY_SECONDS = 365 * 86400.0
BARE_MAX_AGE_MINIMUM = 3600.0

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?")
_DELTA_SECONDS = re.compile(r"\d+")


def parse_duration(text: str) -> float:
    """Return the seconds in a duration such as "5s", "30m", "2h", "3d", "250ms" or "90"."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError(f"invalid duration {text!r}: expected a number with unit ms, s, m, h or d")
    number, unit = match.groups()
    return float(number) * _UNIT_SECONDS[unit or "s"]


def _with_unit(text: str, kind: str, examples: str) -> float:
    """Return the seconds in a duration that names its unit, or a ValueError calling it an invalid `kind`."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None or match.group(2) is None:
        raise ValueError(f"invalid {kind} {text!r}: give a number with its unit, e.g. {examples}")
    return parse_duration(text)


def parse_age(text: str) -> float:
    """Return the seconds in an age such as "30d" or "12h"; a number without its unit is refused."""
    # Read as seconds, "30" meant as days would reach back 30 seconds (a purge: nearly everything;
    # FORWARD_MAX_AGE: every report dead after 30 s of failures).
    return _with_unit(text, "age", "30d or 12h")


def parse_max_age(text: str) -> float:
    """Return the seconds in an age after which a failing item is given up ("3d"); it must be more than 0.

    A bare number is seconds, as it always was, but only from an hour up: "30" meant as days would
    give every report up after 30 seconds of an Emarsys outage.
    """
    seconds = parse_duration(text)
    if _has_no_unit(text) and seconds < BARE_MAX_AGE_MINIMUM:
        raise ValueError(f"invalid age {text!r}: give a number with its unit, e.g. 30d or 12h "
                         f"(a bare number is seconds, and then at least {BARE_MAX_AGE_MINIMUM:.0f})")
    if seconds <= 0:
        # Every report would be a dead letter at its first failure.
        raise ValueError(f"must be more than 0, e.g. {DEFAULT_MAX_AGE}, not {text!r}")
    return _at_most_a_year(seconds, text)


def _has_no_unit(text: str) -> bool:
    match = _DURATION.fullmatch(text.strip().lower())
    return match is not None and match.group(2) is None


def _at_most_a_year(seconds: float, text: str) -> float:
    # Far longer, a time computed from it would pass the year 9999 and end the worker's loop.
    if seconds > MAX_RETRY_SECONDS:
        raise ValueError(f"{text!r} is longer than the most allowed, 365d")
    return seconds


def parse_schedule(text: str) -> tuple[float, ...]:
    """Return the delays, in seconds, of a schedule such as "5s,1m,2h" (a bare number is seconds)."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise ValueError("retry schedule is empty: give at least one delay, e.g. '5s,1m'")
    return tuple(_at_most_a_year(parse_duration(part), part) for part in parts)


def _setting(name: str, parse: Callable[[str], Any], text: str) -> Any:
    """Return what `parse` reads from the setting `name`, or a ValueError that names it."""
    try:
        return parse(text)
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from None


def _as_utc(moment: datetime) -> datetime:
    # The models store naive UTC; HTTP dates and clocks may be aware.
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Return the seconds a Retry-After value asks to wait, or None when it is absent or invalid."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if _DELTA_SECONDS.fullmatch(text):
        return float(text)
    try:
        retry_at = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    # A date already past means "now"; a negative wait would be meaningless.
    return max(0.0, (_as_utc(retry_at) - _as_utc(now)).total_seconds())


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff schedule with jitter, plus the age after which an item is given up."""

    delays: tuple[float, ...] = parse_schedule(DEFAULT_SCHEDULE)
    max_age: float = parse_duration(DEFAULT_MAX_AGE)
    jitter: float = DEFAULT_JITTER

    def __post_init__(self) -> None:
        """Reject a policy that could never schedule a sensible retry."""
        if not self.delays:
            raise ValueError("retry schedule is empty")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {self.jitter}")
        if self.max_age <= 0:
            raise ValueError(f"max age must be positive, got {self.max_age}")

    @classmethod
    def from_config(cls, schedule: str = DEFAULT_SCHEDULE, max_age: str = DEFAULT_MAX_AGE,
                    jitter: float = DEFAULT_JITTER) -> RetryPolicy:
        """Build a policy from FORWARD_RETRY_SCHEDULE ("5s,1m") and FORWARD_MAX_AGE ("3d"), naming a bad one."""
        return cls(delays=_setting("FORWARD_RETRY_SCHEDULE", parse_schedule, schedule),
                   max_age=_setting("FORWARD_MAX_AGE", parse_max_age, max_age), jitter=jitter)

    def next_delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Return the seconds to wait after the attempt-th failure (1-based), jittered."""
        if attempt < 1:
            raise ValueError(f"attempt counts failures so far and starts at 1, got {attempt}")
        # Past the end of the schedule the last delay repeats until max_age.
        base = self.delays[min(attempt, len(self.delays)) - 1]
        # Jitter spreads retries of many batches that failed together.
        factor = (rng or random).uniform(1 - self.jitter, 1 + self.jitter)
        return base * factor

    def delay_for(self, attempt: int, retry_after: float | None,
                  rng: random.Random | None = None) -> float:
        """Return the schedule's delay, lengthened to the server's Retry-After if given, capped at max_age.

        Retry-After only lengthens a wait: "0", or a date already past, would otherwise send every
        batch again at once, over and over, for as long as the server answers so.
        """
        delay = self.next_delay(attempt, rng)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_age))
        return delay

    def is_exhausted(self, first_attempt_at: datetime, now: datetime) -> bool:
        """Return whether an item first tried at first_attempt_at is now too old to retry."""
        return (_as_utc(now) - _as_utc(first_attempt_at)).total_seconds() >= self.max_age
