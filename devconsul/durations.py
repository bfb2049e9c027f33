"""Go `time.Duration` strings ("500ms", "1m30s") as Consul reads and prints them, in integer nanoseconds."""

from __future__ import annotations

import re

from devconsul.errors import BadRequest

NS_PER_S = 1_000_000_000
_UNITS_NS: dict[str, int] = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,  # U+00B5 micro sign
    "μs": 1_000,  # U+03BC greek mu
    "ms": 1_000_000,
    "s": NS_PER_S,
    "m": 60 * NS_PER_S,
    "h": 3600 * NS_PER_S,
}
_PART = re.compile(r"(\d*\.?\d*)([^\d.]*)")


def parse_duration_ns(text: str) -> int:
    """Parse a Go duration string into nanoseconds; raises BadRequest with Go's message on bad input."""
    original = text
    sign = 1
    if text[:1] in "+-" and text:
        sign = -1 if text[0] == "-" else 1
        text = text[1:]
    if text == "0":
        return 0
    if not text:
        raise BadRequest(f'time: invalid duration "{original}"')
    total = 0.0
    pos = 0
    while pos < len(text):
        match = _PART.match(text, pos)
        if match is None or match.end() == pos:
            raise BadRequest(f'time: invalid duration "{original}"')
        number, unit = match.group(1), match.group(2)
        if number in ("", "."):
            raise BadRequest(f'time: invalid duration "{original}"')
        if not unit:
            raise BadRequest(f'time: missing unit in duration "{original}"')
        if unit not in _UNITS_NS:
            raise BadRequest(f'time: unknown unit "{unit}" in duration "{original}"')
        total += float(number) * _UNITS_NS[unit]
        pos = match.end()
    return sign * round(total)


def format_duration(ns: int) -> str:
    """Print nanoseconds the way Go's Duration.String does ("0s", "500ms", "1m30s", "1h0m0s")."""
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < NS_PER_S:
        for unit, size in (("ms", 1_000_000), ("µs", 1_000), ("ns", 1)):
            if ns >= size:
                return sign + _decimal(ns, size) + unit
    hours, rest = divmod(ns, 3600 * NS_PER_S)
    minutes, rest = divmod(rest, 60 * NS_PER_S)
    seconds = _decimal(rest, NS_PER_S) + "s"
    if hours:
        return f"{sign}{hours}h{minutes}m{seconds}"
    if minutes:
        return f"{sign}{minutes}m{seconds}"
    return sign + seconds


def _decimal(value: int, unit: int) -> str:
    whole, frac = divmod(value, unit)
    if not frac:
        return str(whole)
    digits = len(str(unit)) - 1
    return f"{whole}.{str(frac).rjust(digits, '0').rstrip('0')}"
