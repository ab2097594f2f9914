"""Read on-call schedule files (YAML or iCalendar) and answer "who is on call at instant T".

Policy auto-approval rules may say "the requester is on call" and name a schedule file. The file
format follows from its extension: ``.yaml`` / ``.yml`` is YAML, ``.ics`` / ``.ical`` is
iCalendar; anything else is refused. A shift covers ``starts <= T < ends``: whoever starts at T is
on call, whoever ends at T no longer is.

YAML
----
::

    timezone: Europe/Berlin        # optional, default UTC; applies to times without an offset
    shifts:
      - who: alice                 # user name or e-mail address, kept as written
        from: 2026-11-30T08:00     # ISO 8601 date and time; offset optional
        to: 2026-12-07T08:00
      - who: bob@example.com
        from: 2026-12-07T08:00+01:00
        to: 2026-12-14T08:00+01:00

Validation is strict: the document is a mapping with only ``timezone`` and ``shifts``
(``shifts`` required, ``shifts: []`` means nobody is on call); every shift has exactly ``who``,
``from`` and ``to``; ``who`` is a non-empty string; times are date *and* time (a bare date is an
error), written as a YAML timestamp or an ISO 8601 string; ``from`` is before ``to``; the time
zone is an IANA name known to ``zoneinfo``. Local times are read with ``fold=0``: a time that
occurs twice at the end of summer time means its first occurrence. Errors name the file, line,
shift (``shifts[1].to``) and reason.

iCalendar
---------
Every VEVENT is a shift (recurring ones are expanded with ``recurring_ical_events``: RRULE,
RDATE, EXDATE and moved occurrences via RECURRENCE-ID). Who is on call for an event:

* every ``ATTENDEE``, with a ``mailto:`` prefix removed (any case) - PagerDuty / Opsgenie exports;
* else every ``X-JITACCESS-WHO``;
* else the ``SUMMARY`` text, stripped.

Times: DTSTART / DTEND with TZID (IANA name or a VTIMEZONE in the file), in UTC, or floating
(read in the calendar's ``X-WR-TIMEZONE``, else UTC); the end is DTEND or DURATION; all-day
(DATE) events cover whole days in ``X-WR-TIMEZONE``, else UTC. Events with ``STATUS:CANCELLED``
put nobody on call. Refused: unparsable content, a TZID that is neither a known zone nor defined
in the file, an event without DTSTART, with both DTEND and DURATION, with a timed start and no
end, ending before or when it starts, or naming nobody.

As with ``recurring_ical_events.of``, a calendar with ``X-WR-TIMEZONE`` has its UTC times moved
into that zone, so a UTC-timed RRULE repeats at the same local time (Google Calendar's meaning).
Local times in the hour repeated at the end of summer time mean its first occurrence; that also
holds for such a UTC time in an ``X-WR-TIMEZONE`` calendar once the library has moved it.

`FileOnCall` reads files on demand and caches each parsed schedule by path and the file's
``(mtime_ns, size, inode)``, so a file rewritten by a cron export is used on the next call.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import threading
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from pathlib import Path
from typing import IO, Any, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import icalendar
import recurring_ical_events  # type: ignore[import-untyped]
import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

__all__ = [
    "FileOnCall",
    "Schedule",
    "ScheduleError",
    "Shift",
    "check_schedule",
    "load_schedule",
]

log = logging.getLogger(__name__)

YAML_SUFFIXES = frozenset({".yaml", ".yml"})
ICAL_SUFFIXES = frozenset({".ics", ".ical"})
MAX_FILE_BYTES = 16 * 1024 * 1024

_MAILTO = re.compile(r"^\s*mailto:", re.IGNORECASE)
_MERGE_TAG = "tag:yaml.org,2002:merge"
_QUERY_MARGIN = timedelta(days=1)


class ScheduleError(Exception):
    """A schedule file that cannot be read or parsed; message names the file and (for YAML) the
    line / shift index and the reason."""

    def __init__(self, path: str, reason: str, *, line: int | None = None) -> None:
        self.path = path
        self.reason = " ".join(reason.split())  # always one line
        self.line = line
        where = path if line is None else f"{path}:{line}"
        super().__init__(f"{where}: {self.reason}")

    def again(self) -> ScheduleError:
        """A fresh copy, for raising a cached failure again."""
        return ScheduleError(self.path, self.reason, line=self.line)


@dataclass(frozen=True)
class Shift:
    """One person on call from `starts` (inclusive) to `ends` (exclusive), both aware UTC."""

    who: str
    starts: datetime
    ends: datetime

    def __post_init__(self) -> None:
        if self.starts.tzinfo is None or self.ends.tzinfo is None:
            raise ValueError("shift times must be timezone-aware")
        object.__setattr__(self, "starts", self.starts.astimezone(UTC))
        object.__setattr__(self, "ends", self.ends.astimezone(UTC))
        if not self.starts < self.ends:
            raise ValueError("a shift must end after it starts")

    def covers(self, at: datetime) -> bool:
        return self.starts <= at < self.ends


def _aware_utc(at: datetime) -> datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("`at` must be a timezone-aware datetime")
    return at.astimezone(UTC)


class Schedule:
    """Who is on call when, as read from one file (see `load_schedule`)."""

    def __init__(self, source: str, shifts: tuple[Shift, ...] = ()) -> None:
        self.source = source
        self._shifts = tuple(sorted(shifts, key=lambda s: (s.starts, s.ends, s.who)))

    def shifts_at(self, at: datetime) -> tuple[Shift, ...]:
        """The shifts covering `at` (aware): starts <= at < ends."""
        instant = _aware_utc(at)
        return tuple(s for s in self._shifts if s.covers(instant))

    def on_call(self, at: datetime) -> frozenset[str]:
        """Who is on call at `at` (aware): everyone with a shift where starts <= at < ends."""
        return frozenset(s.who for s in self.shifts_at(at))


# --------------------------------------------------------------------------- files


def _suffix(name: str) -> str:
    suffix = Path(name).suffix.lower()
    if suffix not in YAML_SUFFIXES | ICAL_SUFFIXES:
        allowed = ", ".join(sorted(YAML_SUFFIXES | ICAL_SUFFIXES))
        shown = suffix or "no extension"
        raise ScheduleError(name, f"unsupported schedule format ({shown}); use one of {allowed}")
    return suffix


def _read_open(fh: IO[bytes], name: str) -> bytes:
    data = fh.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise ScheduleError(name, f"file is larger than {MAX_FILE_BYTES} bytes")
    return data


def _oserror(name: str, exc: OSError) -> ScheduleError:
    return ScheduleError(name, f"cannot read the file: {exc.strerror or type(exc).__name__}")


def _check_regular(name: str) -> None:
    """Refuse directories, FIFOs and devices before opening (a FIFO would block the open)."""
    mode = os.stat(name).st_mode
    if not stat.S_ISREG(mode):
        raise ScheduleError(name, "cannot read the file: not a regular file")


def _parse(data: bytes, name: str, suffix: str) -> Schedule:
    try:
        if suffix in YAML_SUFFIXES:
            return _parse_yaml(data, name)
        return _parse_ical(data, name)
    except ScheduleError:
        raise
    except Exception as exc:  # a library tripping over input it should have refused cleanly
        raise ScheduleError(name, f"cannot be parsed: {_library_reason(exc)}") from None


def load_schedule(path: str | Path) -> Schedule:
    """Read and validate one schedule file; raise ScheduleError naming the file and problem."""
    name = os.fspath(path)
    suffix = _suffix(name)
    try:
        _check_regular(name)
        with open(name, "rb") as fh:
            data = _read_open(fh, name)
    except OSError as exc:
        raise _oserror(name, exc) from None
    return _parse(data, name, suffix)


def check_schedule(path: str | Path) -> str | None:
    """None when the file loads, else the problem as one line."""
    try:
        load_schedule(path)
    except ScheduleError as exc:
        return str(exc)
    return None


_CacheKey = tuple[int, int, int]


class FileOnCall:
    """Reads schedule files on demand and caches each by (path, mtime_ns, size), so a schedule
    file rewritten by a cron export is picked up on the next call without a restart.

    The cache key also holds the inode, so a file replaced by rename is always re-read. Failed
    parses are cached the same way (a broken file is not re-parsed until it changes); a missing
    or unreadable file is retried on every call. Thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[_CacheKey, Schedule | ScheduleError]] = {}

    def who(self, path: str, at: datetime) -> frozenset[str] | None:
        """Who is on call at `at` per the file at `path`; None when it cannot be read or parsed
        (the caller then treats the rule as not firing). Failures are logged as warnings."""
        _aware_utc(at)
        try:
            return self.schedule(path).on_call(at)
        except ScheduleError as exc:
            log.warning("on-call schedule unusable, nobody counts as on call: %s", exc)
            return None

    def schedule(self, path: str | Path) -> Schedule:
        """The schedule in `path`, from the cache when the file is unchanged; ScheduleError if
        it cannot be read or parsed."""
        name = os.fspath(path)
        suffix = _suffix(name)
        try:
            _check_regular(name)
            with open(name, "rb") as fh:
                st = os.fstat(fh.fileno())
                key: _CacheKey = (st.st_mtime_ns, st.st_size, st.st_ino)
                with self._lock:
                    cached = self._cache.get(name)
                if cached is not None and cached[0] == key:
                    result = cached[1]
                else:
                    data = _read_open(fh, name)
                    result = self._parse_or_error(data, name, suffix)
                    with self._lock:
                        self._cache[name] = (key, result)
        except OSError as exc:
            with self._lock:
                self._cache.pop(name, None)
            raise _oserror(name, exc) from None
        if isinstance(result, ScheduleError):
            raise result.again()
        return result

    @staticmethod
    def _parse_or_error(data: bytes, name: str, suffix: str) -> Schedule | ScheduleError:
        try:
            return _parse(data, name, suffix)
        except ScheduleError as exc:
            return exc


# --------------------------------------------------------------------------- YAML


_SCALARS = SafeConstructor()


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def _scalar(node: ScalarNode, name: str, key_path: str, what: str = "value") -> object:
    """The Python value of a scalar node (YAML 1.1 safe rules: timestamps, ints, bools...)."""
    try:
        return _SCALARS.construct_object(cast(Any, node), deep=True)
    except (yaml.YAMLError, ValueError, TypeError, OverflowError):
        # e.g. a timestamp-shaped value that is no real date: 2026-02-30 08:00:00
        where = f"{key_path}: " if key_path else ""
        raise ScheduleError(
            name, f"{where}{_short(node.value)} is not a valid {what}", line=_line(node)
        ) from None


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fields(
    node: MappingNode, name: str, key_path: str, allowed: tuple[str, ...]
) -> dict[str, Node]:
    where = f"{key_path}: " if key_path else ""
    found: dict[str, Node] = {}
    for key_node, value_node in node.value:
        plain = isinstance(key_node, ScalarNode) and key_node.tag != _MERGE_TAG
        key = _scalar(key_node, name, key_path) if plain else None
        if not isinstance(key, str):
            raise ScheduleError(
                name,
                f"{where}keys must be plain strings (one of {', '.join(allowed)})",
                line=_line(key_node),
            )
        if key not in allowed:
            raise ScheduleError(
                name,
                f"{where}unknown key {key!r}; allowed: {', '.join(allowed)}",
                line=_line(key_node),
            )
        if key in found:
            raise ScheduleError(name, f"{where}duplicate key {key!r}", line=_line(key_node))
        found[key] = value_node
    return found


def _parse_yaml(data: bytes, name: str) -> Schedule:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ScheduleError(name, "not UTF-8 text") from None
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = int(mark.line) + 1 if mark is not None else None
        reason = (
            ", ".join(part for part in (exc.context, exc.problem) if part) or "cannot be parsed"
        )
        raise ScheduleError(name, f"invalid YAML: {reason}", line=line) from None
    except yaml.YAMLError as exc:
        raise ScheduleError(name, f"invalid YAML: {type(exc).__name__}") from None
    finally:
        loader.dispose()
    if root is None:
        raise ScheduleError(name, "the file is empty; expected a mapping with `shifts`")
    if not isinstance(root, MappingNode):
        raise ScheduleError(
            name,
            "the top level must be a mapping with `shifts` (and optional `timezone`)",
            line=_line(root),
        )
    top = _fields(root, name, "", ("timezone", "shifts"))
    zone: tzinfo = UTC
    if "timezone" in top:
        zone = _yaml_zone(top["timezone"], name)
    if "shifts" not in top:
        raise ScheduleError(name, "missing required key `shifts`", line=_line(root))
    seq = top["shifts"]
    if not isinstance(seq, SequenceNode):
        raise ScheduleError(name, "shifts: must be a list of shifts", line=_line(seq))
    shifts = tuple(_yaml_shift(item, i, name, zone) for i, item in enumerate(seq.value))
    return Schedule(name, shifts)


def _yaml_zone(node: Node, name: str) -> tzinfo:
    value = _scalar(node, name, "timezone") if isinstance(node, ScalarNode) else None
    if not isinstance(value, str) or not value.strip():
        raise ScheduleError(
            name, "timezone: must be an IANA time zone name such as Europe/Berlin", line=_line(node)
        )
    try:
        return ZoneInfo(value.strip())
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(
            name, f"timezone: unknown time zone {value!r}", line=_line(node)
        ) from None


def _yaml_shift(node: Node, index: int, name: str, zone: tzinfo) -> Shift:
    key_path = f"shifts[{index}]"
    if not isinstance(node, MappingNode):
        raise ScheduleError(
            name, f"{key_path}: must be a mapping with who, from and to", line=_line(node)
        )
    fields = _fields(node, name, key_path, ("who", "from", "to"))
    for required in ("who", "from", "to"):
        if required not in fields:
            raise ScheduleError(
                name, f"{key_path}: missing required key `{required}`", line=_line(node)
            )
    who_node = fields["who"]
    who_path = f"{key_path}.who"
    who = _scalar(who_node, name, who_path) if isinstance(who_node, ScalarNode) else None
    if not isinstance(who, str) or not who.strip():
        raise ScheduleError(
            name,
            f"{who_path}: must be a non-empty string (a user name or e-mail address)",
            line=_line(who_node),
        )
    starts = _yaml_time(fields["from"], f"{key_path}.from", name, zone)
    ends = _yaml_time(fields["to"], f"{key_path}.to", name, zone)
    if not starts < ends:
        raise ScheduleError(
            name,
            f"{key_path}: `to` ({ends.isoformat()}) must be after `from` ({starts.isoformat()})",
            line=_line(fields["to"]),
        )
    return Shift(who.strip(), starts, ends)


def _iso_text(text: str) -> date | datetime | None:
    """An ISO 8601 string as a date (bare date) or a datetime; None when it is neither."""
    text = text.strip()
    for parse in (date.fromisoformat, datetime.fromisoformat):
        try:
            return parse(text)
        except ValueError:
            continue
    return None


def _yaml_time(node: Node, key_path: str, name: str, zone: tzinfo) -> datetime:
    line = _line(node)
    expected = "an ISO 8601 date and time such as 2026-11-30T08:00 or 2026-11-30T08:00+01:00"
    if not isinstance(node, ScalarNode):
        raise ScheduleError(name, f"{key_path}: must be {expected}", line=line)
    value = _scalar(node, name, key_path, "date and time")
    if isinstance(value, str):
        value = _iso_text(value)
        if value is None:
            raise ScheduleError(
                name, f"{key_path}: {_short(node.value)} is not {expected}", line=line
            )
    if isinstance(value, datetime):
        moment = value if value.utcoffset() is not None else value.replace(tzinfo=zone)
        return moment.astimezone(UTC)
    if isinstance(value, date):
        raise ScheduleError(
            name, f"{key_path}: a bare date is not enough; give a time as well", line=line
        )
    raise ScheduleError(name, f"{key_path}: must be {expected}, not {_short(value)}", line=line)


# --------------------------------------------------------------------------- iCalendar


def _library_reason(exc: Exception) -> str:
    """A library error message, cut before any quoted input so no file content is repeated."""
    text = str(exc).split("\n", 1)[0]
    cut = min((i for i in (text.find("'"), text.find('"'), text.find(": b")) if i >= 0), default=-1)
    if cut >= 0:
        text = text[:cut]
    text = text.strip(" :")
    return text or type(exc).__name__


def _calendar_zone(cal: icalendar.Calendar, name: str) -> tzinfo:
    raw = cal.get("X-WR-TIMEZONE")
    if raw is None:
        return UTC
    value = str(raw).strip()
    try:
        return ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(name, f"X-WR-TIMEZONE: unknown time zone {value!r}") from None


def _ical_instant(prop: Any, zone: tzinfo, what: str, name: str) -> datetime:
    """A DTSTART/DTEND value as aware UTC: DATE is midnight in `zone`, floating is in `zone`."""
    value = getattr(prop, "dt", None)
    if isinstance(value, datetime):
        if value.utcoffset() is None:
            params = getattr(prop, "params", {})
            tzid = params.get("TZID") if hasattr(params, "get") else None
            if tzid:
                raise ScheduleError(
                    name,
                    f"{what} uses TZID {str(tzid)!r}, which is neither a known time zone "
                    "nor defined by a VTIMEZONE in the file",
                )
            value = value.replace(tzinfo=zone)
        return value.astimezone(UTC)
    if isinstance(value, date):
        return datetime.combine(value, time(), zone).astimezone(UTC)
    raise ScheduleError(name, f"{what} must be a date or a date-time")


def _ical_who(event: icalendar.cal.Component, what: str, name: str) -> tuple[str, ...]:
    for prop in ("ATTENDEE", "X-JITACCESS-WHO"):
        raw = event.get(prop)
        if raw is None:
            continue
        values = raw if isinstance(raw, list) else [raw]
        people = tuple(_MAILTO.sub("", str(v)).strip() for v in values)
        if not all(people):
            raise ScheduleError(name, f"{what}: an empty {prop}")
        return people
    raw_summary = event.get("SUMMARY", "")
    if isinstance(raw_summary, list):
        raise ScheduleError(name, f"{what}: has more than one SUMMARY")
    summary = str(raw_summary).strip()
    if not summary:
        raise ScheduleError(name, f"{what}: names nobody (no ATTENDEE, X-JITACCESS-WHO or SUMMARY)")
    return (summary,)


def _event_label(event: icalendar.cal.Component, index: int | None) -> str:
    uid = event.get("UID")
    label = "VEVENT" if index is None else f"VEVENT {index}"
    return label + (f" (UID {str(uid)!r})" if uid is not None else "")


def _check_event(event: icalendar.cal.Component, index: int, zone: tzinfo, name: str) -> None:
    what = _event_label(event, index)
    if "DTSTART" not in event:
        raise ScheduleError(name, f"{what}: has no DTSTART")
    starts = _ical_instant(event["DTSTART"], zone, f"{what}: DTSTART", name)
    has_end, has_duration = "DTEND" in event, "DURATION" in event
    if has_end and has_duration:
        raise ScheduleError(name, f"{what}: has both DTEND and DURATION")
    if has_end:
        ends = _ical_instant(event["DTEND"], zone, f"{what}: DTEND", name)
    elif has_duration:
        duration = getattr(event["DURATION"], "dt", None)
        if not isinstance(duration, timedelta):
            raise ScheduleError(name, f"{what}: DURATION must be a duration")
        ends = starts + duration
    elif isinstance(getattr(event["DTSTART"], "dt", None), datetime):
        raise ScheduleError(name, f"{what}: has a start time but no DTEND or DURATION")
    else:
        ends = starts + timedelta(days=1)
    if not starts < ends:
        raise ScheduleError(name, f"{what}: ends before or when it starts")
    _ical_who(event, what, name)


def _parse_ical(data: bytes, name: str) -> Schedule:
    try:
        parsed = icalendar.Calendar.from_ical(data)
    except Exception as exc:
        raise ScheduleError(name, f"not a valid iCalendar file: {_library_reason(exc)}") from None
    if not isinstance(parsed, icalendar.Calendar):
        raise ScheduleError(name, "not a valid iCalendar file: the top level must be VCALENDAR")
    for component in parsed.walk():
        for prop, _message in component.errors:
            target = f"property {prop}" if prop else "a line"
            raise ScheduleError(
                name, f"not a valid iCalendar file: {target} in {component.name} cannot be parsed"
            )
    zone = _calendar_zone(parsed, name)
    for index, event in enumerate(parsed.walk("VEVENT"), start=1):
        _check_event(event, index, zone, name)
    try:
        query = recurring_ical_events.of(parsed)
    except Exception as exc:
        raise ScheduleError(name, f"not a valid iCalendar file: {_library_reason(exc)}") from None
    return _ICalSchedule(name, query, zone)


class _ICalSchedule(Schedule):
    """Occurrences are expanded on each question, around the instant asked about."""

    def __init__(self, source: str, query: Any, zone: tzinfo) -> None:
        super().__init__(source)
        self._query = query
        self._zone = zone
        self._query_lock = threading.Lock()  # the query object is not documented thread-safe

    def shifts_at(self, at: datetime) -> tuple[Shift, ...]:
        instant = _aware_utc(at)
        # Query in the calendar's zone: the library gives floating and all-day times the
        # query's zone, which must agree with how _ical_instant reads them. It compares times
        # in one zone by wall clock (fold ignored), so ask about a wider window and then keep
        # exactly the occurrences covering the instant, compared in UTC.
        local = instant.astimezone(self._zone)
        window = (local - _QUERY_MARGIN, local + _QUERY_MARGIN)
        try:
            with self._query_lock:
                components = list(self._query.between(*window))
            shifts: list[Shift] = []
            for component in components:
                event = cast(icalendar.cal.Component, component)
                if str(event.get("STATUS", "")).strip().upper() == "CANCELLED":
                    continue
                what = _event_label(event, None)
                starts = _ical_instant(
                    event["DTSTART"], self._zone, f"{what}: DTSTART", self.source
                )
                ends = _ical_instant(event["DTEND"], self._zone, f"{what}: DTEND", self.source)
                if starts <= instant < ends:
                    shifts.extend(
                        Shift(who, starts, ends) for who in _ical_who(event, what, self.source)
                    )
        except ScheduleError:
            raise
        except Exception as exc:
            raise ScheduleError(
                self.source, f"cannot expand the calendar: {_library_reason(exc)}"
            ) from None
        return tuple(sorted(shifts, key=lambda s: (s.starts, s.ends, s.who)))
