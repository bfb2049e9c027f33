"""A whole Spring `application.yml` as one tree: documents, profiles, dotted and indexed keys; pure.

Spring Boot reads a file as property sources, one per YAML document. This module gives the loader what Spring's
binder would see: the documents that apply to the active profiles, merged in file order (a later document's
value wins; a list is replaced as a whole, never merged item by item), with Spring's other spellings of a key
turned into the nested form:

- dotted keys inside YAML: `spring.cloud.gateway.routes:` is `spring: {cloud: {gateway: {routes: ...}}}`;
- indexed keys: `routes[0].id: a` and `routes[1]: {...}` build the list `routes`;
- bracketed map keys: `'[/**]':` is the literal key `/**` (how Spring writes CORS paths).

Profiles: `spring.config.activate.on-profile` (Boot 2.4+) or the older scalar `spring.profiles` makes a document
conditional; the expression may list several profiles (`a, b`: any), negate (`!a`) and combine (`a & b`, `a | b`).
The active profiles are the caller's (`--profile`), else `SPRING_PROFILES_ACTIVE`, else the last
`spring.profiles.active` of an unconditional document, plus `spring.profiles.include` and the members of
`spring.profiles.group`; none active means `default`. `spring.config.activate.on-cloud-platform` is matched against
the platform Spring Boot would detect from the environment (kubernetes, cloud_foundry, heroku, none).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from gateway.config import environment
from gateway.config.nodes import Reader, YMap, YNode, YScalar, YSeq, find
from gateway.errors import ConfigError
from gateway.routing.factory import relaxed

_PART = re.compile(r"\[([^\]]*)\]|([^.\[\]]+)")


def key_parts(key: str) -> list[str | int]:
    """`a.b[0].c` -> ['a', 'b', 0, 'c']; `[/**]` -> ['/**']; a key that does not split stays whole."""
    parts: list[str | int] = []
    pos = 0
    while pos < len(key):
        if key[pos] == "." and parts:
            pos += 1
        found = _PART.match(key, pos)
        if found is None:
            return [key]
        bracket, name = found.group(1), found.group(2)
        if bracket is not None:
            parts.append(int(bracket) if bracket.isdigit() else bracket)
        else:
            parts.append(name)
        pos = found.end()
    return parts or [key]


@dataclass(slots=True)
class _Builder:
    """A section being assembled: children by relaxed key, each either a finished leaf or another builder."""

    line: int
    children: dict[str | int, tuple[str | int, YNode | _Builder]] = field(default_factory=dict)

    def insert(self, parts: Sequence[str | int], value: YNode, line: int) -> None:
        head, rest = parts[0], parts[1:]
        slot = relaxed(head) if isinstance(head, str) else head
        existing = self.children.get(slot)
        spelled = existing[0] if existing is not None else head
        if not rest and not (isinstance(value, YMap) and value.items):
            # A scalar or a list replaces what was there (Spring replaces lists whole); so does an empty section.
            self.children[slot] = (spelled, normalize(value))
            return
        child = existing[1] if existing is not None else None
        if not isinstance(child, _Builder):
            child = _Builder(line)
            self.children[slot] = (spelled, child)
        if rest:
            child.insert(rest, value, line)
        else:
            assert isinstance(value, YMap)
            child.insert_map(value)

    def insert_map(self, section: YMap) -> None:
        for key, value in section.items:
            self.insert(key_parts(key), value, _line(value))

    def build(self) -> YNode:
        if self.children and all(isinstance(slot, int) for slot in self.children):
            ordered = sorted(self.children.items(), key=lambda item: int(item[0]))
            return YSeq(tuple(_finish(node) for _, (_, node) in ordered), self.line)
        return YMap(tuple((str(spelled), _finish(node)) for spelled, node in self.children.values()), self.line)


def _finish(node: YNode | _Builder) -> YNode:
    return node.build() if isinstance(node, _Builder) else node


def _line(node: YNode) -> int:
    if isinstance(node, YMap) and node.items:
        return min(node.line, _line(node.items[0][1]))
    return node.line


def normalize(node: YNode) -> YNode:
    """One document (or value) with dotted, indexed and bracketed keys turned into nested sections and lists."""
    if isinstance(node, YSeq):
        return YSeq(tuple(normalize(item) for item in node.items), node.line)
    if isinstance(node, YMap):
        builder = _Builder(node.line)
        builder.insert_map(node)
        return builder.build()
    return node


def profile_matches(expression: str, active: frozenset[str]) -> bool:
    """Spring's profile expression: `a, b` (any), `a | b`, `a & b`, `!a`, parentheses."""
    return any(_Expression(part, active).parse() for part in expression.split(",") if part.strip())


class _Expression:
    def __init__(self, text: str, active: frozenset[str]) -> None:
        self.tokens = re.findall(r"[()&|!]|[^()&|!\s]+", text)
        self.pos = 0
        self.active = active

    def _next(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def parse(self) -> bool:
        value = self._term()
        while self._next() in ("&", "|"):
            op = self.tokens[self.pos]
            self.pos += 1
            other = self._term()
            value = (value and other) if op == "&" else (value or other)
        return value

    def _term(self) -> bool:
        token = self._next()
        self.pos += 1
        if token == "!":
            return not self._term()
        if token == "(":
            value = self.parse()
            self.pos += 1  # the closing parenthesis
            return value
        if token is None or token in (")", "&", "|"):
            raise ValueError("malformed profile expression")
        return token in self.active


def _condition(doc: YNode) -> YNode | None:
    found = find(doc, "spring.config.activate.on-profile")
    if found is not None:
        return found
    legacy = find(doc, "spring.profiles")
    return legacy if isinstance(legacy, YScalar | YSeq) else None


def _names(reader: Reader, node: YNode | None, key: str) -> list[str]:
    if node is None or (isinstance(node, YScalar) and node.value is None):
        return []  # `active:` left empty (a build tool was to fill it in): no profile from the file
    items = node.items if isinstance(node, YSeq) else (node,)
    return [p.strip() for item in items for p in reader.text(item, key).split(",") if p.strip()]


def merge_documents(
    docs: Sequence[YNode], *, file: str, env: Mapping[str, str], profiles: Sequence[str] | None = None
) -> tuple[YMap, tuple[str, ...]]:
    """The documents that apply, merged in order (later wins), and the active profiles."""
    normal: list[YMap] = []
    for doc in docs:
        if not isinstance(doc, YMap):
            raise ConfigError("the top level must be a section (key: value pairs)", file=file, line=doc.line)
        merged = normalize(doc)
        assert isinstance(merged, YMap)
        normal.append(merged)
    plain = [doc for doc in normal if _condition(doc) is None]
    base = _merge(plain)
    reader = Reader(file, base, env)
    if profiles:
        active = [p.strip() for name in profiles for p in name.split(",") if p.strip()]
    elif env.get(environment.PROFILES, "").strip():
        active = environment.active_profiles(env)
    else:
        active = _names(reader, find(base, "spring.profiles.active"), "spring.profiles.active")
    active += _names(reader, find(base, "spring.profiles.include"), "spring.profiles.include")
    active = active or ["default"]
    groups = find(base, "spring.profiles.group")
    if isinstance(groups, YMap):
        # A group's name activates its members (Boot 2.4+), once each.
        for name, members in groups.items:
            if name in active:
                active += [m for m in _names(reader, members, f"spring.profiles.group.{name}") if m not in active]
    active_set = frozenset(active)
    chosen: list[YMap] = []
    platform = _cloud_platform(env)
    for doc in normal:
        on_platform = find(doc, "spring.config.activate.on-cloud-platform")
        if on_platform is not None:
            wanted = reader.text(on_platform, "spring.config.activate.on-cloud-platform").strip().lower()
            if wanted.replace("-", "_") != platform:
                continue
        condition = _condition(doc)
        if condition is None:
            chosen.append(doc)
            continue
        key = "spring.config.activate.on-profile"
        try:
            if any(profile_matches(expr, active_set) for expr in _names(reader, condition, key)):
                chosen.append(doc)
        except ValueError as exc:
            raise reader.error(str(exc), condition, key) from None
    return _merge(chosen), tuple(sorted(active_set))


def _cloud_platform(env: Mapping[str, str]) -> str:
    """The platform as Spring Boot's CloudPlatform detects it from the environment (`none` when none is)."""
    if "KUBERNETES_SERVICE_HOST" in env and "KUBERNETES_SERVICE_PORT" in env:
        return "kubernetes"
    if "VCAP_APPLICATION" in env or "VCAP_SERVICES" in env:
        return "cloud_foundry"
    if "DYNO" in env:
        return "heroku"
    return "none"


def _merge(docs: Sequence[YMap]) -> YMap:
    builder = _Builder(docs[0].line if docs else 1)
    for doc in docs:
        builder.insert_map(doc)
    merged = builder.build()
    return merged if isinstance(merged, YMap) else YMap((), 1)
