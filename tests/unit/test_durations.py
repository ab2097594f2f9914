"""Durations as written in policy and on the command line."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jitaccess.domain.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("15m", timedelta(minutes=15)),
        ("4h", timedelta(hours=4)),
        ("1d", timedelta(days=1)),
        ("1w", timedelta(weeks=1)),
        ("PT1H", timedelta(hours=1)),
        ("P1DT2H", timedelta(days=1, hours=2)),
        ("PT30M", timedelta(minutes=30)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        (" 4h ", timedelta(hours=4)),
    ],
)
def test_accepted_spellings_parse_to_the_right_length(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["0s", "-1h", "abc", "P", "PT", "4 hours", "", "1.5h", "h"])
def test_bad_spellings_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_zero_is_refused_as_not_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        parse_duration("0s")


def test_a_non_string_is_refused_with_value_error() -> None:
    with pytest.raises(ValueError):
        parse_duration(3600)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (timedelta(seconds=30), "30s"),
        (timedelta(hours=1, minutes=30), "1h30m"),
        (timedelta(days=1, hours=2), "1d2h"),
        (timedelta(weeks=1), "7d"),
    ],
)
def test_format_uses_the_shortest_exact_spelling(value: timedelta, text: str) -> None:
    assert format_duration(value) == text


@given(st.integers(min_value=1, max_value=10 * 365 * 86400))
def test_format_then_parse_gives_the_same_length(seconds: int) -> None:
    value = timedelta(seconds=seconds)
    assert parse_duration(format_duration(value)) == value


def test_absurd_durations_and_non_ascii_digits_are_refused_with_value_error() -> None:
    for text in ("999999999999d", "99999999999999999999s", "P9999999999D", "\u0663m", "1\u0660m"):
        with pytest.raises(ValueError):
            parse_duration(text)
