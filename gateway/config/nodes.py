"""The parsed routes.yaml as a small tree that remembers line numbers, with Spring-style placeholder resolution
and value conversions that fail as ConfigErrors naming file, line and key; pure (the loader builds the tree).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.errors import ConfigError
from gateway.routing.factory import relaxed


@dataclass(frozen=True, slots=True)
class YScalar:
    """A scalar as written (None for YAML null)."""

    value: str | None
    line: int


@dataclass(frozen=True, slots=True)
class YSeq:
    """A sequence."""

    items: tuple[YNode, ...]
    line: int


@dataclass(frozen=True, slots=True)
class YMap:
    """A mapping: (key, value) in file order; keys are strings."""

    items: tuple[tuple[str, YNode], ...]
    line: int

    def get(self, key: str) -> YNode | None:
        """The value of `key`, compared in Spring's relaxed form (`passing-only` == `passingOnly`)."""
        wanted = relaxed(key)
        for name, node in self.items:
            if relaxed(name) == wanted:
                return node
        return None


YNode = YScalar | YSeq | YMap


def find(node: YNode | None, dotted: str) -> YNode | None:
    """The node at a dotted path; keys that contain dots themselves (`spring.cloud.gateway:`) work too."""
    wanted = [relaxed(part) for part in dotted.split(".")] if dotted else []
    return _find(node, wanted)


def _find(node: YNode | None, wanted: list[str]) -> YNode | None:
    if not wanted:
        return node
    if not isinstance(node, YMap):
        return None
    for name, child in node.items:
        parts = [relaxed(part) for part in name.split(".")]
        if wanted[: len(parts)] == parts:
            found = _find(child, wanted[len(parts) :])
            if found is not None:
                return found
    return None


_MAX_VALUE_CHARS = 65536
_DURATION = re.compile(r"(-?\d+(?:\.\d+)?)\s*(ns|us|ms|s|m|h|d)?", re.IGNORECASE)
_ISO_DURATION = re.compile(r"PT(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?", re.IGNORECASE)
_UNITS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration_s(text: str, *, default_unit: str) -> float:
    """`10s`, `500ms`, `1m`, `PT5S`, or a bare number in `default_unit` (`s` or `ms`) -> seconds."""
    text = text.strip()
    found = _DURATION.fullmatch(text)
    if found:
        unit = (found.group(2) or default_unit).lower()
        return float(found.group(1)) * _UNITS[unit]
    iso = _ISO_DURATION.fullmatch(text)
    if iso and any(iso.groups()):
        hours, minutes, seconds = (float(g) if g else 0.0 for g in iso.groups())
        return hours * 3600 + minutes * 60 + seconds
    raise ValueError(f"not a duration: {text!r} (e.g. 10s, 500ms, 1m)")


class Reader:
    """Reads values out of the tree: placeholders resolved, types converted, errors located."""

    def __init__(self, file: str, root: YNode | None, env: Mapping[str, str]) -> None:
        self.file = file
        self.root = root
        self.env = env
        self.warn_unknown = False  # `wsgate.unknown-filters: warn`: what wsgate does not implement is a warning
        self.warnings: list[str] = []

    def error(self, message: str, node: YNode | None, key: str) -> ConfigError:
        """A ConfigError at `node`'s line."""
        return ConfigError(message, file=self.file, line=node.line if node is not None else None, key=key)

    def unknown(self, message: str, node: YNode | None, key: str) -> None:
        """Something wsgate does not implement: a ConfigError, or under `warn` a warning naming the line."""
        error = self.error(message, node, key)
        if not self.warn_unknown:
            raise error
        self.warnings.append(str(error))

    # -- placeholders -------------------------------------------------------------------------------------------

    def resolve(self, text: str, node: YNode, key: str, *, keep: frozenset[str] = frozenset()) -> str:
        """Resolve `${a.b}` / `${NAME:default}` in text; names in `keep` stay as written (regex groups)."""
        return self._resolve(text, node, key, keep, ())

    def _resolve(self, text: str, node: YNode, key: str, keep: frozenset[str], stack: tuple[str, ...]) -> str:
        if "${" not in text:
            return text
        out: list[str] = []
        i = 0
        while True:
            start = text.find("${", i)
            if start == -1:
                out.append(text[i:])
                break
            if start > 0 and text[start - 1] == "\\":
                # Spring's escape: "\${x}" is the literal "${x}".
                out.append(text[i : start - 1] + "${")
                i = start + 2
                continue
            end = _closing(text, start + 2)
            if end == -1:
                out.append(text[i:])
                break
            out.append(text[i:start])
            out.append(self._one(text[start + 2 : end], text[start : end + 1], node, key, keep, stack))
            i = end + 1
        result = "".join(out)
        if len(result) > _MAX_VALUE_CHARS:
            # Placeholders that double at every level would otherwise grow without bound.
            raise self.error(f"placeholders expand to more than {_MAX_VALUE_CHARS} characters", node, key)
        return result

    def _one(
        self, inner: str, whole: str, node: YNode, key: str, keep: frozenset[str], stack: tuple[str, ...]
    ) -> str:
        name, default = _split_default(inner)
        name = self._resolve(name, node, key, keep, stack).strip()
        if name in keep:
            return whole
        if name in stack:
            raise self.error(f"placeholder ${{{name}}} refers to itself", node, key)
        if len(stack) > 32:
            raise self.error("placeholders nest too deeply", node, key)
        target = find(self.root, name) if name else None
        if isinstance(target, YScalar) and target.value is not None:
            return self._resolve(target.value, node, key, keep, (*stack, name))
        if target is not None and not isinstance(target, YScalar):
            raise self.error(f"placeholder ${{{name}}} names a section, not a value", node, key)
        for env_name in (name, re.sub(r"[.\[\]]", "_", name).replace("-", "").upper()):
            if env_name and env_name in self.env:
                return self.env[env_name]
        if default is not None:
            return self._resolve(default, node, key, keep, stack)
        raise self.error(f"unresolvable placeholder ${{{name}}} (no such key, no such environment variable)", node, key)

    # -- typed values ------------------------------------------------------------------------------------------

    def text(self, node: YNode | None, key: str, *, keep: frozenset[str] = frozenset()) -> str:
        """A scalar as a string, placeholders resolved."""
        if not isinstance(node, YScalar):
            raise self.error("expected a value, found a list or section", node, key)
        if node.value is None:
            raise self.error("missing value", node, key)
        return self.resolve(node.value, node, key, keep=keep)

    def optional_text(self, node: YNode | None, key: str) -> str | None:
        """A scalar as a string, or None when absent or null."""
        if node is None or (isinstance(node, YScalar) and node.value is None):
            return None
        return self.text(node, key)

    def integer(self, node: YNode | None, key: str, *, minimum: int | None = None) -> int:
        """An integer scalar."""
        text = self.text(node, key).strip()
        try:
            number = int(text, 0) if text.lower().startswith(("0x", "0o")) else int(text)
        except ValueError:
            raise self.error(f"expected an integer, not {text!r}", node, key) from None
        if minimum is not None and number < minimum:
            raise self.error(f"must be >= {minimum}, not {number}", node, key)
        return number

    def boolean(self, node: YNode | None, key: str) -> bool:
        """true/false (also yes/no/on/off, as YAML 1.1 and Spring accept)."""
        text = self.text(node, key).strip().lower()
        if text in ("true", "yes", "on"):
            return True
        if text in ("false", "no", "off"):
            return False
        raise self.error(f"expected true or false, not {text!r}", node, key)

    def duration_s(self, node: YNode | None, key: str, *, default_unit: str, positive: bool = True,
                   off: bool = False) -> float:
        """A duration in seconds (see parse_duration_s); with `off`, SCG's `-1` (no bound) is math.inf."""
        text = self.text(node, key)
        if off and text.strip() == "-1":
            return math.inf
        try:
            seconds = parse_duration_s(text, default_unit=default_unit)
        except ValueError as exc:
            raise self.error(str(exc), node, key) from None
        if seconds < 0 or (positive and seconds == 0):
            raise self.error(f"must be {'> 0' if positive else '>= 0'}, not {text!r}", node, key)
        return seconds

    def mapping(self, node: YNode | None, key: str) -> YMap:
        """A section (mapping); an empty value counts as an empty section."""
        if isinstance(node, YScalar) and node.value is None:
            return YMap((), node.line)
        if not isinstance(node, YMap):
            raise self.error("expected a section (key: value pairs)", node, key)
        return node

    def sequence(self, node: YNode | None, key: str) -> YSeq:
        """A list; an empty value counts as an empty list."""
        if isinstance(node, YScalar) and node.value is None:
            return YSeq((), node.line)
        if not isinstance(node, YSeq):
            raise self.error("expected a list", node, key)
        return node

    def check_keys(self, node: YMap, key: str, allowed: tuple[str, ...]) -> None:
        """ConfigError for a key not in `allowed` (relaxed comparison), naming the known ones."""
        known = {relaxed(name) for name in allowed}
        for name, child in node.items:
            if relaxed(name) not in known:
                where = f"{key}.{name}" if key else name
                raise self.error(f"unknown key (known: {', '.join(allowed)})", child, where)


def _closing(text: str, start: int) -> int:
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            if depth == 0:
                return i
            depth -= 1
    return -1


def _split_default(inner: str) -> tuple[str, str | None]:
    depth = 0
    for i, ch in enumerate(inner):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == ":" and depth == 0:
            return inner[:i], inner[i + 1 :]
    return inner, None
