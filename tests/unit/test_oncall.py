"""On-call schedule files: who is on call at an instant, from YAML or iCalendar; the refusals."""

from __future__ import annotations

import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from jitaccess.adapters.oncall import (
    FileOnCall,
    ScheduleError,
    Shift,
    check_schedule,
    load_schedule,
)

FIXTURES = Path(__file__).resolve().parent / "oncall_fixtures"
BERLIN = ZoneInfo("Europe/Berlin")
LOGGER = "jitaccess.adapters.oncall"


def utc(text: str) -> datetime:
    """An instant written as ISO 8601 in UTC, e.g. '2026-10-26T07:00'."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def ics(*events: str, header: str = "") -> str:
    """A calendar around VEVENT bodies (the lines between BEGIN:VEVENT and END:VEVENT)."""
    lines = ["BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//jitaccess tests//EN"]
    lines += [line for line in header.splitlines() if line]
    for body in events:
        lines += ["BEGIN:VEVENT", *[line for line in body.splitlines() if line], "END:VEVENT"]
    lines.append("END:VCALENDAR")
    return "\r\n".join(lines) + "\r\n"


def refusal(path: Path) -> ScheduleError:
    with pytest.raises(ScheduleError) as caught:
        load_schedule(path)
    message = str(caught.value)
    assert message.startswith(str(path))
    assert "\n" not in message
    assert check_schedule(path) == message
    return caught.value


# --------------------------------------------------------------------------- YAML


def test_yaml_local_times_follow_the_zone_across_the_end_of_summer_time() -> None:
    schedule = load_schedule(FIXTURES / "primary.yaml")
    # alice: 2026-10-19 08:00 CEST (06:00Z) until 2026-10-26 08:00 CET (07:00Z)
    (alice,) = schedule.shifts_at(utc("2026-10-20T00:00"))
    assert alice == Shift("alice", utc("2026-10-19T06:00"), utc("2026-10-26T07:00"))
    assert alice.ends - alice.starts == timedelta(hours=169)
    assert schedule.on_call(utc("2026-10-26T06:30")) == {"alice"}
    assert schedule.on_call(utc("2026-10-19T05:59:59")) == frozenset()


def test_yaml_boundaries_start_inclusive_end_exclusive() -> None:
    schedule = load_schedule(FIXTURES / "primary.yaml")
    assert schedule.on_call(utc("2026-10-19T06:00")) == {"alice"}
    assert schedule.on_call(utc("2026-10-26T07:00")) == {"bob@example.com"}
    assert schedule.on_call(utc("2026-10-26T06:59:59.999999")) == {"alice"}
    assert schedule.on_call(utc("2026-11-09T07:00")) == frozenset()


def test_yaml_explicit_offsets_yaml_timestamps_and_overlapping_shifts() -> None:
    schedule = load_schedule(FIXTURES / "primary.yaml")
    # bob's times carry +01:00; carol's start is a YAML timestamp in UTC: one hour of overlap.
    assert schedule.on_call(utc("2026-11-02T05:59")) == {"bob@example.com"}
    assert schedule.on_call(utc("2026-11-02T06:00")) == {"bob@example.com", "carol"}
    assert schedule.on_call(utc("2026-11-02T06:59:59")) == {"bob@example.com", "carol"}
    assert schedule.on_call(utc("2026-11-02T07:00")) == {"carol"}


def test_yaml_the_instant_asked_about_may_be_in_any_zone() -> None:
    schedule = load_schedule(FIXTURES / "primary.yaml")
    berlin_local = datetime(2026, 10, 26, 8, 0, tzinfo=BERLIN)  # CET: 07:00Z
    assert schedule.on_call(berlin_local) == {"bob@example.com"}
    minus_five = datetime(2026, 10, 26, 1, 59, tzinfo=timezone(timedelta(hours=-5)))
    assert schedule.on_call(minus_five) == {"alice"}
    with pytest.raises(ValueError, match="timezone-aware"):
        schedule.on_call(datetime(2026, 10, 26, 8, 0))


def test_yaml_without_timezone_reads_local_times_as_utc(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "utc.yml",
        "shifts:\n"
        "  - {who: dora, from: '2026-11-30T08:00', to: '2026-12-07T08:00'}\n"
        "  - {who: ed, from: 2026-12-07T08:00+01:00, to: 2026-12-07T09:00+01:00}\n",
    )
    schedule = load_schedule(path)
    assert schedule.on_call(utc("2026-11-30T08:00")) == {"dora"}
    assert schedule.on_call(utc("2026-11-30T07:59")) == frozenset()
    assert schedule.on_call(utc("2026-12-07T07:30")) == {"dora", "ed"}


def test_yaml_empty_rotation_means_nobody() -> None:
    assert check_schedule(FIXTURES / "empty_rotation.yaml") is None
    schedule = load_schedule(FIXTURES / "empty_rotation.yaml")
    assert schedule.on_call(utc("2026-11-30T08:00")) == frozenset()


SHIFT = "  - who: alice\n    from: 2026-11-30T08:00\n    to: 2026-12-07T08:00\n"

YAML_REFUSALS = [
    pytest.param("", None, "the file is empty", id="empty-file"),
    pytest.param("- who: alice\n", 1, "the top level must be a mapping", id="top-level-list"),
    pytest.param("shift: []\n", 1, "unknown key 'shift'; allowed: timezone, shifts", id="top-key"),
    pytest.param("timezone: UTC\n", 1, "missing required key `shifts`", id="no-shifts"),
    pytest.param("shifts: alice\n", 1, "shifts: must be a list of shifts", id="shifts-not-list"),
    pytest.param("shifts:\n", 1, "shifts: must be a list of shifts", id="shifts-null"),
    pytest.param("shifts: []\nshifts: []\n", 2, "duplicate key 'shifts'", id="duplicate-top-key"),
    pytest.param("shifts:\n  - alice\n", 2, "shifts[0]: must be a mapping", id="shift-scalar"),
    pytest.param(
        "shifts:\n" + SHIFT + SHIFT + "    role: primary\n",
        8,
        "shifts[1]: unknown key 'role'; allowed: who, from, to",
        id="shift-key",
    ),
    pytest.param(
        "shifts:\n" + SHIFT + "  - who: bob\n    from: 2026-12-07T08:00\n",
        5,
        "shifts[1]: missing required key `to`",
        id="missing-to",
    ),
    pytest.param(
        "shifts:\n  - from: 2026-11-30T08:00\n    to: 2026-12-07T08:00\n",
        2,
        "shifts[0]: missing required key `who`",
        id="missing-who",
    ),
    pytest.param(
        "shifts:\n  - who: alice\n    to: 2026-12-07T08:00\n",
        2,
        "shifts[0]: missing required key `from`",
        id="missing-from",
    ),
    pytest.param(
        SHIFT.replace("who: alice", "who: ''").join(["shifts:\n", ""]),
        2,
        "shifts[0].who: must be a non-empty string",
        id="who-empty",
    ),
    pytest.param(
        SHIFT.replace("who: alice", "who: 42").join(["shifts:\n", ""]),
        2,
        "shifts[0].who: must be a non-empty string",
        id="who-number",
    ),
    pytest.param(
        SHIFT.replace("who: alice", "who: [alice, bob]").join(["shifts:\n", ""]),
        2,
        "shifts[0].who: must be a non-empty string",
        id="who-list",
    ),
    pytest.param(
        "shifts:\n" + SHIFT + "    who: bob\n", 5, "shifts[0]: duplicate key 'who'", id="dup-who"
    ),
    pytest.param(
        SHIFT.replace("2026-11-30T08:00", "2026-11-30").join(["shifts:\n", ""]),
        3,
        "shifts[0].from: a bare date is not enough",
        id="bare-date",
    ),
    pytest.param(
        SHIFT.replace("2026-12-07T08:00", "'2026-12-07'").join(["shifts:\n", ""]),
        4,
        "shifts[0].to: a bare date is not enough",
        id="bare-date-string",
    ),
    pytest.param(
        SHIFT.replace("2026-11-30T08:00", "next monday").join(["shifts:\n", ""]),
        3,
        "shifts[0].from: 'next monday' is not an ISO 8601 date and time",
        id="not-a-time",
    ),
    pytest.param(
        SHIFT.replace("2026-11-30T08:00", "2026-02-30 08:00:00").join(["shifts:\n", ""]),
        3,
        "shifts[0].from: '2026-02-30 08:00:00' is not a valid date and time",
        id="impossible-timestamp",
    ),
    pytest.param(
        SHIFT.replace("alice", "2026-02-30 08:00:00").join(["shifts:\n", ""]),
        2,
        "shifts[0].who: '2026-02-30 08:00:00' is not a valid value",
        id="who-impossible-timestamp",
    ),
    pytest.param(
        "shifts: []\n2026-02-30 08:00:00: x\n",
        2,
        "'2026-02-30 08:00:00' is not a valid value",
        id="key-impossible-timestamp",
    ),
    pytest.param(
        "shifts: []\n? [a, b]\n: x\n",
        2,
        "keys must be plain strings",
        id="complex-key",
    ),
    pytest.param(
        "shifts:\n  - <<: {who: alice}\n    from: 2026-11-30T08:00\n",
        2,
        "shifts[0]: keys must be plain strings",
        id="merge-key",
    ),
    pytest.param(
        "base: &b {who: x}\nshifts: []\n",
        1,
        "unknown key 'base'",
        id="anchor-key",
    ),
    pytest.param(
        SHIFT.replace("2026-11-30T08:00", "2026-11-31T08:00").join(["shifts:\n", ""]),
        3,
        "shifts[0].from: '2026-11-31T08:00' is not an ISO 8601",
        id="impossible-iso-string",
    ),
    pytest.param(
        SHIFT.replace("2026-11-30T08:00", "8:00").join(["shifts:\n", ""]),
        3,
        "shifts[0].from: must be an ISO 8601 date and time such as 2026-11-30T08:00 or "
        "2026-11-30T08:00+01:00, not 480",
        id="sexagesimal-time",
    ),
    pytest.param(
        SHIFT.replace("2026-11-30T08:00", "{at: 8}").join(["shifts:\n", ""]),
        3,
        "shifts[0].from: must be an ISO 8601 date and time",
        id="time-mapping",
    ),
    pytest.param(
        SHIFT.replace("2026-12-07T08:00", "2026-11-30T08:00").join(["shifts:\n", ""]),
        4,
        "shifts[0]: `to` (2026-11-30T08:00:00+00:00) must be after `from`",
        id="empty-shift",
    ),
    pytest.param(
        SHIFT.replace("2026-12-07T08:00", "2026-11-30T07:00").join(["shifts:\n", ""]),
        4,
        "must be after `from`",
        id="ends-before-start",
    ),
    pytest.param(
        "timezone: Mars/Olympus_Mons\nshifts: []\n",
        1,
        "timezone: unknown time zone 'Mars/Olympus_Mons'",
        id="unknown-timezone",
    ),
    pytest.param(
        "timezone: ../../etc/passwd\nshifts: []\n",
        1,
        "timezone: unknown time zone '../../etc/passwd'",
        id="timezone-path",
    ),
    pytest.param(
        "timezone: 1\nshifts: []\n", 1, "timezone: must be an IANA time zone name", id="tz-number"
    ),
    pytest.param(
        "shifts: []\n---\nshifts: []\n", 2, "invalid YAML: expected a single document", id="2-docs"
    ),
    pytest.param("shifts: [\n", 2, "invalid YAML:", id="syntax"),
]


@pytest.mark.parametrize(("text", "line", "reason"), YAML_REFUSALS)
def test_yaml_refusals_name_file_line_shift_and_reason(
    tmp_path: Path, text: str, line: int | None, reason: str
) -> None:
    path = write(tmp_path, "rota.yaml", text)
    error = refusal(path)
    assert error.path == str(path)
    assert error.line == line
    assert reason in error.reason
    where = str(path) if line is None else f"{path}:{line}"
    assert str(error).startswith(f"{where}: ")


def test_yaml_syntax_error_fixture_names_its_line() -> None:
    error = refusal(FIXTURES / "broken.yaml")
    assert error.line == 5
    assert "invalid YAML" in error.reason


def test_yaml_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("shifts:\n  - who: jürgen\n".encode("latin-1"))
    assert "not UTF-8 text" in refusal(path).reason


def test_unsupported_extension_and_unreadable_paths(tmp_path: Path) -> None:
    json_file = write(tmp_path, "rota.json", "{}")
    assert "unsupported schedule format (.json)" in refusal(json_file).reason
    assert "no extension" in refusal(write(tmp_path, "rota", "shifts: []\n")).reason
    assert "cannot read the file" in refusal(tmp_path / "missing.yaml").reason
    (tmp_path / "dir.yaml").mkdir()
    assert "not a regular file" in refusal(tmp_path / "dir.yaml").reason


def test_upper_case_extensions_are_recognised(tmp_path: Path) -> None:
    shutil.copy(FIXTURES / "primary.yaml", tmp_path / "PRIMARY.YML")
    shutil.copy(FIXTURES / "weekly.ics", tmp_path / "weekly.iCal")
    assert check_schedule(tmp_path / "PRIMARY.YML") is None
    assert check_schedule(tmp_path / "weekly.iCal") is None


# --------------------------------------------------------------------------- Shift


def test_shift_is_normalised_to_utc_and_must_have_a_length() -> None:
    shift = Shift("alice", datetime(2026, 7, 1, 8, tzinfo=BERLIN), utc("2026-07-02T06:00"))
    assert shift.starts == utc("2026-07-01T06:00")
    assert shift.starts.tzinfo is UTC
    with pytest.raises(ValueError, match="end after"):
        Shift("alice", utc("2026-07-01T06:00"), utc("2026-07-01T06:00"))
    with pytest.raises(ValueError, match="timezone-aware"):
        Shift("alice", datetime(2026, 7, 1, 6), utc("2026-07-01T07:00"))


# --------------------------------------------------------------------------- iCalendar


def test_ics_single_events_attendee_mailto_and_boundaries() -> None:
    schedule = load_schedule(FIXTURES / "pagerduty.ics")
    assert schedule.on_call(utc("2026-11-30T06:59:59")) == frozenset()
    assert schedule.on_call(utc("2026-11-30T07:00")) == {"alice@example.com"}
    assert schedule.on_call(utc("2026-12-07T06:59:59")) == {"alice@example.com"}
    # "MAILTO:" in upper case is stripped too; the address is kept as written.
    assert schedule.on_call(utc("2026-12-07T07:00")) == {"Bob@Example.com"}
    assert schedule.on_call(utc("2026-12-14T07:00")) == frozenset()


def test_ics_tzid_with_duration_and_every_attendee() -> None:
    schedule = load_schedule(FIXTURES / "pagerduty.ics")
    # 09:00 New York (EST, -05:00) for 8 hours: 14:00Z to 22:00Z, two attendees, one sans mailto.
    pair = {"carol@example.com", "dan@example.com"}
    assert schedule.on_call(utc("2026-12-10T13:59")) == {"Bob@Example.com"}
    assert schedule.on_call(utc("2026-12-10T14:00")) == {"Bob@Example.com", *pair}
    assert schedule.on_call(utc("2026-12-10T21:59:59")) == {"Bob@Example.com", *pair}
    assert schedule.on_call(utc("2026-12-10T22:00")) == {"Bob@Example.com"}
    shifts = schedule.shifts_at(utc("2026-12-10T15:00"))
    assert Shift("dan@example.com", utc("2026-12-10T14:00"), utc("2026-12-10T22:00")) in shifts


def test_ics_summary_fallback_and_x_jitaccess_who_on_all_day_events() -> None:
    schedule = load_schedule(FIXTURES / "allday.ics")
    # Whole days in X-WR-TIMEZONE (Europe/Berlin, +01:00 in December), SUMMARY "erin" as who.
    assert schedule.on_call(utc("2026-12-23T22:59:59")) == frozenset()
    assert schedule.on_call(utc("2026-12-23T23:00")) == {"erin"}
    assert schedule.on_call(utc("2026-12-26T22:59:59")) == {"erin"}
    assert schedule.on_call(utc("2026-12-26T23:00")) == frozenset()
    # A DATE start without DTEND lasts one day; X-JITACCESS-WHO wins over SUMMARY.
    assert schedule.on_call(utc("2026-12-30T23:00")) == {"frank"}
    assert schedule.on_call(utc("2026-12-31T22:59:59")) == {"frank"}
    assert schedule.on_call(utc("2026-12-31T23:00")) == frozenset()


def test_ics_all_day_and_floating_times_default_to_utc(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "utc.ics",
        ics(
            "UID:a\nDTSTART;VALUE=DATE:20261224\nDTEND;VALUE=DATE:20261225\nSUMMARY:  gina  ",
            "UID:b\nDTSTART:20261225T080000\nDTEND:20261225T090000\nX-JITACCESS-WHO:hank",
        ),
    )
    schedule = load_schedule(path)
    assert schedule.on_call(utc("2026-12-23T23:59:59")) == frozenset()
    assert schedule.on_call(utc("2026-12-24T00:00")) == {"gina"}
    assert schedule.on_call(utc("2026-12-24T23:59:59")) == {"gina"}
    assert schedule.on_call(utc("2026-12-25T08:00")) == {"hank"}
    assert schedule.on_call(utc("2026-12-25T09:00")) == frozenset()


def test_ics_weekly_rotation_checked_weeks_later_in_local_time() -> None:
    schedule = load_schedule(FIXTURES / "weekly.ics")
    # Handover Mondays 09:00 Berlin: 07:00Z in summer time, 08:00Z in winter time.
    assert schedule.on_call(utc("2026-10-05T06:59:59")) == frozenset()
    assert schedule.on_call(utc("2026-10-05T07:00")) == {"alice@example.com"}
    assert schedule.on_call(utc("2026-10-12T07:00")) == {"bob@example.com"}
    assert schedule.on_call(utc("2026-11-02T07:30")) == {"bob@example.com"}  # after DST ends
    assert schedule.on_call(utc("2026-11-02T08:00")) == {"alice@example.com"}
    assert schedule.on_call(utc("2026-11-23T08:00")) == {"bob@example.com"}
    assert schedule.on_call(utc("2026-12-28T08:00")) == {"alice@example.com"}
    # Months later, in the next summer: the rotation is still 09:00 local.
    assert schedule.on_call(utc("2027-06-21T06:59:59")) == {"alice@example.com"}
    assert schedule.on_call(utc("2027-06-21T07:00")) == {"bob@example.com"}
    (shift,) = schedule.shifts_at(utc("2027-06-22T00:00"))
    assert shift == Shift("bob@example.com", utc("2027-06-21T07:00"), utc("2027-06-28T07:00"))


def test_ics_exdate_removes_one_occurrence_and_recurrence_id_moves_one() -> None:
    schedule = load_schedule(FIXTURES / "weekly.ics")
    # EXDATE 2026-11-16: alice's week is gone, nobody else covers it.
    assert schedule.on_call(utc("2026-11-16T08:00")) == frozenset()
    assert schedule.on_call(utc("2026-11-22T12:00")) == frozenset()
    # Her occurrences before and after are untouched.
    assert schedule.on_call(utc("2026-10-20T12:00")) == {"alice@example.com"}
    assert schedule.on_call(utc("2026-11-30T08:00")) == {"alice@example.com"}
    # RECURRENCE-ID 2026-11-09: carol swaps in for bob's week.
    assert schedule.on_call(utc("2026-11-09T08:00")) == {"carol@example.com"}
    assert schedule.on_call(utc("2026-11-15T12:00")) == {"carol@example.com"}
    assert schedule.on_call(utc("2026-10-26T08:00")) == {"bob@example.com"}


def test_ics_rdate_adds_an_occurrence_and_until_ends_the_rotation(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "rdate.ics",
        ics(
            "UID:r\nDTSTART:20260105T090000Z\nDTEND:20260106T090000Z\n"
            "RRULE:FREQ=WEEKLY;UNTIL=20260119T090000Z\nRDATE:20260301T090000Z\n"
            "ATTENDEE:mailto:ivy@example.com"
        ),
    )
    schedule = load_schedule(path)
    assert schedule.on_call(utc("2026-01-19T09:00")) == {"ivy@example.com"}
    assert schedule.on_call(utc("2026-01-26T09:00")) == frozenset()  # after UNTIL
    assert schedule.on_call(utc("2026-03-01T09:00")) == {"ivy@example.com"}  # RDATE
    assert schedule.on_call(utc("2026-03-02T09:00")) == frozenset()


def test_ics_cancelled_events_put_nobody_on_call(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "cancelled.ics",
        ics(
            "UID:c\nDTSTART:20260105T090000Z\nDTEND:20260106T090000Z\nSTATUS:CANCELLED\n"
            "SUMMARY:jack",
            "UID:d\nDTSTART:20260105T090000Z\nDTEND:20260106T090000Z\nSTATUS:CONFIRMED\n"
            "SUMMARY:kim",
        ),
    )
    assert load_schedule(path).on_call(utc("2026-01-05T10:00")) == {"kim"}


def test_ics_tzid_defined_by_a_vtimezone_in_the_file(tmp_path: Path) -> None:
    vtimezone = (
        "BEGIN:VTIMEZONE\nTZID:Custom Standard Time\nBEGIN:STANDARD\n"
        "DTSTART:16010101T000000\nTZOFFSETFROM:+0300\nTZOFFSETTO:+0300\nEND:STANDARD\n"
        "END:VTIMEZONE"
    )
    path = write(
        tmp_path,
        "outlook.ics",
        ics(
            "UID:o\nDTSTART;TZID=Custom Standard Time:20260105T090000\n"
            "DTEND;TZID=Custom Standard Time:20260105T170000\nATTENDEE:mailto:lea@example.com",
            header=vtimezone,
        ),
    )
    schedule = load_schedule(path)
    assert schedule.on_call(utc("2026-01-05T05:59")) == frozenset()
    assert schedule.on_call(utc("2026-01-05T06:00")) == {"lea@example.com"}
    assert schedule.on_call(utc("2026-01-05T14:00")) == frozenset()


def test_ics_instant_in_the_repeated_hour_at_the_end_of_summer_time(tmp_path: Path) -> None:
    # 2026-10-25 in Berlin: 02:00-03:00 happens twice. The shift starts at the first 02:15
    # (CEST, 00:15Z); asked at the second 02:05 (CET, 01:05Z), which is later, not earlier.
    path = write(
        tmp_path,
        "fold.ics",
        ics(
            "UID:f\nDTSTART;TZID=Europe/Berlin:20261025T021500\n"
            "DTEND;TZID=Europe/Berlin:20261025T040000\nSUMMARY:olga"
        ),
    )
    schedule = load_schedule(path)
    assert schedule.on_call(utc("2026-10-25T00:14:59")) == frozenset()
    assert schedule.on_call(utc("2026-10-25T00:15")) == {"olga"}
    assert schedule.on_call(utc("2026-10-25T01:05")) == {"olga"}
    assert schedule.on_call(utc("2026-10-25T02:59:59")) == {"olga"}
    assert schedule.on_call(utc("2026-10-25T03:00")) == frozenset()


def test_ics_without_events_means_nobody(tmp_path: Path) -> None:
    path = write(tmp_path, "none.ics", ics())
    assert load_schedule(path).on_call(utc("2026-01-05T10:00")) == frozenset()


EVENT = "UID:e1\nDTSTART:20260105T090000Z\nDTEND:20260106T090000Z\nSUMMARY:mia\n"

ICS_REFUSALS = [
    pytest.param("", "not a valid iCalendar file", id="empty"),
    pytest.param("just some text\n", "not a valid iCalendar file", id="garbage"),
    pytest.param(
        ics(EVENT).replace("END:VCALENDAR\r\n", ""), "not a valid iCalendar file", id="no-end"
    ),
    pytest.param(
        "BEGIN:VEVENT\r\n" + EVENT.replace("\n", "\r\n") + "END:VEVENT\r\n",
        "the top level must be VCALENDAR",
        id="bare-vevent",
    ),
    pytest.param(
        ics(EVENT.replace("DTSTART:20260105T090000Z", "DTSTART:next monday")),
        "property DTSTART in VEVENT cannot be parsed",
        id="bad-dtstart",
    ),
    pytest.param(
        ics(EVENT + "RRULE:FREQ=FORTNIGHTLY\n"),
        "property RRULE in VEVENT cannot be parsed",
        id="bad-rrule",
    ),
    pytest.param(
        ics(EVENT.replace("DTSTART:20260105T090000Z\n", "")),
        "VEVENT 1 (UID 'e1'): has no DTSTART",
        id="no-dtstart",
    ),
    pytest.param(
        ics(EVENT, EVENT.replace("20260106T090000Z", "20260104T090000Z")),
        "VEVENT 2 (UID 'e1'): ends before or when it starts",
        id="ends-before-start",
    ),
    pytest.param(
        ics(EVENT.replace("20260106T090000Z", "20260105T090000Z")),
        "ends before or when it starts",
        id="zero-length",
    ),
    pytest.param(
        ics(EVENT.replace("DTEND:20260106T090000Z", "DURATION:-PT1H")),
        "ends before or when it starts",
        id="negative-duration",
    ),
    pytest.param(
        ics(EVENT + "DURATION:PT1H\n"), "has both DTEND and DURATION", id="dtend-and-duration"
    ),
    pytest.param(
        ics(EVENT.replace("DTEND:20260106T090000Z\n", "")),
        "has a start time but no DTEND or DURATION",
        id="no-end-time",
    ),
    pytest.param(
        ics(EVENT.replace("DTSTART:20260105T090000Z", "DTSTART;TZID=Mars/Olympus:20260105T090000")),
        "DTSTART uses TZID 'Mars/Olympus', which is neither a known time zone",
        id="unknown-tzid",
    ),
    pytest.param(
        ics(EVENT, header="X-WR-TIMEZONE:Atlantis/Capital"),
        "X-WR-TIMEZONE: unknown time zone 'Atlantis/Capital'",
        id="unknown-x-wr-timezone",
    ),
    pytest.param(
        ics(EVENT.replace("SUMMARY:mia\n", "")),
        "VEVENT 1 (UID 'e1'): names nobody",
        id="nobody",
    ),
    pytest.param(
        ics(EVENT.replace("SUMMARY:mia", "SUMMARY:   ")), "names nobody", id="blank-summary"
    ),
    pytest.param(
        ics(EVENT + "ATTENDEE:mailto:\n"), "VEVENT 1 (UID 'e1'): an empty ATTENDEE", id="attendee"
    ),
    pytest.param(ics(EVENT, header="CALSCALE:HEBREW"), "Only Gregorian calendars", id="calscale"),
]


@pytest.mark.parametrize(("text", "reason"), ICS_REFUSALS)
def test_ics_refusals_name_file_and_reason(tmp_path: Path, text: str, reason: str) -> None:
    path = write(tmp_path, "rota.ics", text)
    error = refusal(path)
    assert error.line is None
    assert reason in error.reason


def test_ics_refusal_does_not_repeat_file_content() -> None:
    error = refusal(FIXTURES / "broken.ics")
    assert "not a valid iCalendar file" in error.reason
    assert "this is not" not in str(error)


# --------------------------------------------------------------------------- check_schedule


@pytest.mark.parametrize(
    "name", ["primary.yaml", "empty_rotation.yaml", "pagerduty.ics", "weekly.ics", "allday.ics"]
)
def test_check_schedule_accepts_the_fixtures(name: str) -> None:
    assert check_schedule(FIXTURES / name) is None


@pytest.mark.parametrize("name", ["broken.yaml", "broken.ics", "missing.yaml"])
def test_check_schedule_reports_one_line(name: str) -> None:
    problem = check_schedule(str(FIXTURES / name))
    assert problem is not None
    assert problem.startswith(str(FIXTURES / name))
    assert "\n" not in problem


# --------------------------------------------------------------------------- FileOnCall

V1 = "shifts:\n  - {who: alice, from: 2026-11-30T08:00Z, to: 2026-12-07T08:00Z}\n"
V2 = V1.replace("alice", "carol")  # same size: only the mtime tells the versions apart


def bump_mtime(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))


def test_file_on_call_answers_from_fixtures() -> None:
    oncall = FileOnCall()
    assert oncall.who(str(FIXTURES / "primary.yaml"), utc("2026-10-20T00:00")) == frozenset(
        {"alice"}
    )
    carol = frozenset({"carol@example.com"})
    assert oncall.who(str(FIXTURES / "weekly.ics"), utc("2026-11-10T00:00")) == carol


def test_file_on_call_caches_an_unchanged_file(tmp_path: Path) -> None:
    path = write(tmp_path, "rota.yaml", V1)
    oncall = FileOnCall()
    first = oncall.schedule(path)
    assert oncall.schedule(path) is first
    assert oncall.schedule(str(path)) is first


def test_file_on_call_picks_up_a_rewritten_file(tmp_path: Path) -> None:
    path = write(tmp_path, "rota.yaml", V1)
    oncall = FileOnCall()
    at = utc("2026-12-01T00:00")
    assert oncall.who(str(path), at) == frozenset({"alice"})
    path.write_text(V2, encoding="utf-8")
    bump_mtime(path)
    assert oncall.who(str(path), at) == frozenset({"carol"})


def test_file_on_call_picks_up_a_file_replaced_by_rename(tmp_path: Path) -> None:
    path = write(tmp_path, "rota.ics", ics(EVENT))
    oncall = FileOnCall()
    at = utc("2026-01-05T10:00")
    assert oncall.who(str(path), at) == frozenset({"mia"})
    staged = write(tmp_path, "rota.ics.tmp", ics(EVENT.replace("mia", "ned")))
    os.replace(staged, path)
    bump_mtime(path)
    assert oncall.who(str(path), at) == frozenset({"ned"})


def test_file_on_call_missing_file_is_none_and_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    missing = tmp_path / "gone.yaml"
    assert FileOnCall().who(str(missing), utc("2026-12-01T00:00")) is None
    (record,) = [r for r in caplog.records if r.name == LOGGER]
    assert record.levelno == logging.WARNING
    assert str(missing) in record.getMessage()
    assert "cannot read the file" in record.getMessage()


@pytest.mark.parametrize("name", ["broken.yaml", "broken.ics"])
def test_file_on_call_broken_file_is_none_and_warns_without_content(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    path = FIXTURES / name
    assert FileOnCall().who(str(path), utc("2026-12-01T00:00")) is None
    (record,) = [r for r in caplog.records if r.name == LOGGER]
    message = record.getMessage()
    assert record.levelno == logging.WARNING
    assert str(path) in message
    assert "invalid YAML" in message or "not a valid iCalendar file" in message
    assert "this is not an icalendar line" not in message
    assert "2026-12-07T08:00" not in message


def test_file_on_call_broken_then_fixed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    path = write(tmp_path, "rota.yaml", "shifts: [\n")
    oncall = FileOnCall()
    at = utc("2026-12-01T00:00")
    assert oncall.who(str(path), at) is None
    assert oncall.who(str(path), at) is None  # the cached failure still warns
    assert len([r for r in caplog.records if r.name == LOGGER]) == 2
    path.write_text(V1, encoding="utf-8")
    bump_mtime(path)
    assert oncall.who(str(path), at) == frozenset({"alice"})
    path.unlink()
    assert oncall.who(str(path), at) is None


def test_file_on_call_unsupported_format_is_none(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    assert FileOnCall().who("/etc/hostname", utc("2026-12-01T00:00")) is None
    assert "unsupported schedule format" in caplog.text


def test_file_on_call_requires_an_aware_instant() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        FileOnCall().who(str(FIXTURES / "primary.yaml"), datetime(2026, 12, 1))


def test_file_on_call_is_safe_across_threads(tmp_path: Path) -> None:
    oncall = FileOnCall()
    weekly = str(FIXTURES / "weekly.ics")
    primary = str(FIXTURES / "primary.yaml")
    start = utc("2026-10-05T07:00")
    instants = [start + timedelta(days=d, hours=h) for d in range(60) for h in (0, 13)]

    def ask(at: datetime) -> tuple[frozenset[str] | None, frozenset[str] | None]:
        return oncall.who(weekly, at), oncall.who(primary, at)

    weekly_direct, primary_direct = load_schedule(weekly), load_schedule(primary)
    expected = [(weekly_direct.on_call(at), primary_direct.on_call(at)) for at in instants]
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(ask, instants))
    assert answers == expected
