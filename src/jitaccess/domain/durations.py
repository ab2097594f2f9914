"""Durations as people write them in policy and on the command line: 30s, 15m, 4h, 1d, PT1H."""

from __future__ import annotations

import re
from datetime import timedelta

# ASCII digits only: `\d` alone also matches other scripts' digits.
_SHORT = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$", re.ASCII)
_COMPOUND = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$", re.ASCII)
_ISO = re.compile(
    r"^P(?:(?P<w>\d+)W)?(?:(?P<d>\d+)D)?(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+)S)?)?$",
    re.ASCII,
)
# Far beyond any grant, well inside what timedelta and datetime arithmetic can hold.
MAX_DURATION = timedelta(days=3650)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    """Parse `30s`, `15m`, `4h`, `1d`, `1h30m` or ISO 8601 (`PT1H`, `P1DT2H`); raise ValueError."""
    if not isinstance(text, str):
        raise ValueError(f"expected a duration like 30m, 4h or PT1H, got {text!r}")
    raw = text.strip()
    match = _SHORT.match(raw)
    if match:
        seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        return _positive(seconds, text)
    if raw and raw[0].isdigit():
        compound = _COMPOUND.match(raw)
        if compound and any(compound.groups()):
            d, h, m, s = (int(g) if g else 0 for g in compound.groups())
            return _positive(d * 86400 + h * 3600 + m * 60 + s, text)
    iso = _ISO.match(raw.upper())
    if iso and raw.upper() not in ("P", "PT") and any(iso.groupdict().values()):
        parts = {k: int(v) if v else 0 for k, v in iso.groupdict().items()}
        seconds = (
            parts["w"] * 604800 + parts["d"] * 86400 + parts["h"] * 3600 + parts["m"] * 60
        ) + parts["s"]
        return _positive(seconds, text)
    raise ValueError(f"not a duration: {text!r} (use 30s, 15m, 4h, 1d or ISO 8601 like PT1H)")


def _positive(seconds: int, text: str) -> timedelta:
    if seconds <= 0:
        raise ValueError(f"duration must be positive: {text!r}")
    if seconds > MAX_DURATION.total_seconds():
        raise ValueError(f"duration is longer than 10 years: {text!r}")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """The shortest exact spelling, e.g. 5400s -> 1h30m."""
    seconds = int(value.total_seconds())
    if seconds <= 0:
        return "0s"
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            out.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(out)
