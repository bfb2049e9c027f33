"""Spring's `PathPattern` (spring-web), compiled once and matched against request paths; pure.

Syntax, as in Spring: `?` one character, `*` zero or more characters within a segment, `**` zero or more
segments (only at the end), `{v}` one segment captured as `v`, `{v:regex}` a segment matching a Java regex,
`{*v}` the rest of the path captured with its leading slash (only at the end).

Matching follows Spring's element model: a path is a list of separators and non-empty segments (`/a//b` is
sep, `a`, sep, sep, `b`); each segment is compared percent-decoded with its `;matrix` parameters removed, and
captured values are decoded. `/ws-svc/**` matches `/ws-svc`, `/ws-svc/` and `/ws-svc/x/y`; a lone `*` needs a
non-empty segment except at the end of the pattern (`/a/*` matches `/a/`). With `match_trailing_slash` (SCG's
default) a pattern that ends in a segment also matches the path with one trailing slash.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

from gateway.config.javaregex import JavaRegexError, compile_java_regex

_SEP = None  # a separator element of a parsed path
_VAR_NAME = re.compile(r"[A-Za-z_$][A-Za-z0-9_$.\-]*")

PathElements = tuple[str | None, ...]


class PathPatternError(ValueError):
    """A pattern Spring's PathPatternParser would refuse; the message says where and why."""


def parse_path(raw_path: str) -> PathElements:
    """Split a raw (encoded) path into separators (None) and decoded, matrix-free, non-empty segments."""
    elements: list[str | None] = []
    for index, raw in enumerate(raw_path.split("/")):
        if index:
            elements.append(_SEP)
        if raw:
            elements.append(decode_segment(raw))
    return tuple(elements)


def decode_segment(raw: str) -> str:
    """A raw segment as Spring compares it: `;params` removed, then percent-decoded (UTF-8)."""
    value = raw.split(";", 1)[0]
    return unquote(value, errors="replace") if "%" in value else value


@dataclass(frozen=True, slots=True)
class _Segment:
    """One pattern segment: a whole-segment regex with named variables; `star` marks a lone `*`."""

    regex: re.Pattern[str]
    variables: tuple[tuple[str, str], ...]  # (variable name, regex group name)
    star: bool = False


@dataclass(frozen=True, slots=True)
class _Rest:
    """A trailing `/**` (name None) or `/{*name}`."""

    name: str | None


_Element = _Segment | _Rest | None


class PathPattern:
    """A compiled Spring path pattern; `match()` returns its variables or None."""

    __slots__ = ("_elements", "match_trailing_slash", "pattern")

    def __init__(self, pattern: str, *, match_trailing_slash: bool = True) -> None:
        self.pattern = pattern
        self.match_trailing_slash = match_trailing_slash
        self._elements: tuple[_Element, ...] = _compile(pattern)

    def __repr__(self) -> str:
        return f"PathPattern({self.pattern!r})"

    def __str__(self) -> str:
        return self.pattern

    def match(self, raw_path: str) -> dict[str, str] | None:
        """The captured variables (decoded) if `raw_path` matches, else None."""
        return self.match_elements(parse_path(raw_path))

    def matches(self, raw_path: str) -> bool:
        """Whether `raw_path` matches."""
        return self.match(raw_path) is not None

    def match_elements(self, path: PathElements) -> dict[str, str] | None:
        """Like `match` on an already parsed path (several patterns can share one parse)."""
        variables: dict[str, str] = {}
        pattern = self._elements
        pi = 0
        for index, element in enumerate(pattern):
            last = index == len(pattern) - 1
            if element is None:
                if pi >= len(path) or path[pi] is not None:
                    return None
                pi += 1
                continue
            if isinstance(element, _Rest):
                if pi < len(path) and path[pi] is not None:
                    return None
                if element.name is not None:
                    variables[element.name] = "".join("/" if e is None else e for e in path[pi:])
                return variables
            segment = path[pi] if pi < len(path) else None
            if segment is None:
                # A lone '*' ending the pattern may match "nothing" after a final separator (/a/* vs /a/).
                if element.star and last and pi == len(path):
                    return variables
                return None
            found = element.regex.fullmatch(segment)
            if found is None:
                return None
            for name, group in element.variables:
                variables[name] = found.group(group)
            pi += 1
        if pi == len(path):
            return variables
        trailing_ok = self.match_trailing_slash and pattern and pattern[-1] is not None
        if trailing_ok and pi + 1 == len(path) and path[pi] is None:
            return variables
        return None


def _compile(pattern: str) -> tuple[_Element, ...]:
    if not pattern.startswith("/"):
        # SCG's Path predicate prefixes a missing leading slash; do the same.
        pattern = "/" + pattern
    parts = _split_segments(pattern)
    elements: list[_Element] = []
    seen: set[str] = set()
    for index, part in enumerate(parts):
        elements.append(_SEP)
        if not part:
            continue
        is_last = index == len(parts) - 1
        rest = _rest_element(part)
        if rest is not None:
            if not is_last:
                raise PathPatternError(f"{pattern!r}: '{part}' is only allowed at the end of a pattern")
            elements.pop()  # /** and /{*v} include their separator
            if rest.name is not None:
                _claim(rest.name, seen, pattern)
            elements.append(rest)
            continue
        elements.append(_compile_segment(part, seen, pattern))
    return tuple(elements)


def _rest_element(part: str) -> _Rest | None:
    if part == "**":
        return _Rest(None)
    if part.startswith("{*") and part.endswith("}") and _balanced_single_capture(part):
        name = part[2:-1]
        if not _VAR_NAME.fullmatch(name):
            raise PathPatternError(f"bad capture name {name!r}")
        return _Rest(name)
    if "{*" in part:
        raise PathPatternError(f"'{part}': {{*name}} must be a whole segment")
    return None


def _balanced_single_capture(part: str) -> bool:
    return part.count("{") == 1 and part.count("}") == 1


def _split_segments(pattern: str) -> list[str]:
    """Split on '/' outside `{...}` (a variable's regex may contain '/')."""
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and depth and i + 1 < len(pattern):
            current.append(pattern[i : i + 2])
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth < 0:
                raise PathPatternError(f"{pattern!r}: '}}' without '{{' at offset {i}")
        if c == "/" and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(c)
        i += 1
    if depth:
        raise PathPatternError(f"{pattern!r}: unclosed '{{'")
    parts.append("".join(current))
    return parts[1:]  # the pattern starts with '/'


def _claim(name: str, seen: set[str], pattern: str) -> None:
    if name in seen:
        raise PathPatternError(f"{pattern!r}: variable {{{name}}} is captured twice")
    seen.add(name)


def _compile_segment(part: str, seen: set[str], pattern: str) -> _Segment:
    regex: list[str] = []
    variables: list[tuple[str, str]] = []
    i = 0
    while i < len(part):
        c = part[i]
        if c == "{":
            end = _closing_brace(part, i)
            body = part[i + 1 : end]
            name, _, constraint = body.partition(":")
            if not _VAR_NAME.fullmatch(name):
                raise PathPatternError(f"{pattern!r}: bad variable name {name!r}")
            _claim(name, seen, pattern)
            group = f"v{len(variables)}"
            if constraint:
                try:
                    # Validate on its own so a bad regex is reported as the variable's.
                    inner = compile_java_regex(constraint)
                except JavaRegexError as exc:
                    raise PathPatternError(f"{pattern!r}: variable {{{name}}}: {exc}") from exc
                # Groups inside the constraint would shift numbering; named groups keep ours distinct.
                regex.append(f"(?P<{group}>{_strip_named_groups(inner.pattern)})")
            else:
                # Spring's plain {v} takes any segment value, even one with a decoded CR/LF in it.
                regex.append(f"(?P<{group}>(?s:.*))")
            variables.append((name, group))
            i = end + 1
        elif c == "*":
            regex.append("(?s:.*)")
            i += 1
        elif c == "?":
            regex.append("(?s:.)")
            i += 1
        elif c == "\\" and i + 1 < len(part) and part[i + 1] in "{}*?":
            regex.append(re.escape(part[i + 1]))
            i += 2
        else:
            regex.append(re.escape(c))
            i += 1
    source = "".join(regex)
    try:
        compiled = re.compile(source)
    except re.error as exc:
        raise PathPatternError(f"{pattern!r}: {exc}") from exc
    return _Segment(compiled, tuple(variables), star=part == "*")


def _strip_named_groups(source: str) -> str:
    """Turn `(?P<x>` into `(?:` so a constraint's own names cannot collide with ours."""
    return re.sub(r"\(\?P<[A-Za-z_][A-Za-z0-9_]*>", "(?:", source)


def _closing_brace(part: str, start: int) -> int:
    depth = 0
    i = start
    while i < len(part):
        c = part[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise PathPatternError(f"unclosed '{{' in {part!r}")
