"""Path filters with SCG's semantics: RewritePath, StripPrefix, PrefixPath, SetPath; all work on the raw path."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.routing.factory import ArgValue, Definition, SpecError, bind, get_int, get_str
from gateway.routing.filters.base import PlanState, compile_rewrite, expand


@dataclass(frozen=True, slots=True)
class RewritePath:
    """`RewritePath=regexp, replacement`: Java `replaceAll` on the raw path; the query is kept."""

    regexp: str
    replacement: str
    _pattern: re.Pattern[str]
    _template: str

    name = "RewritePath"

    @staticmethod
    def create(args: Mapping[str, ArgValue]) -> RewritePath:
        regexp = get_str(args, "regexp")
        replacement = get_str(args, "replacement", default="")
        pattern, template = compile_rewrite(regexp, replacement)
        return RewritePath(regexp, replacement, pattern, template)

    def apply(self, state: PlanState) -> None:
        state.path = self._pattern.sub(self._template, state.path)

    def describe(self) -> str:
        # SCG shows the replacement after its "$\\" -> "$" normalisation.
        shown = self.replacement.replace("$\\", "$")
        return f"[RewritePath {self.regexp} = '{shown}']"


@dataclass(frozen=True, slots=True)
class StripPrefix:
    """`StripPrefix=N`: drop the first N segments (SCG tokenizes, so empty segments do not count)."""

    parts: int

    name = "StripPrefix"

    @staticmethod
    def create(args: Mapping[str, ArgValue]) -> StripPrefix:
        return StripPrefix(get_int(args, "parts", default=1))

    def apply(self, state: PlanState) -> None:
        path = state.path
        kept = [part for part in path.split("/") if part.strip()][self.parts :]
        new_path = "/" + "/".join(kept)
        if len(new_path) > 1 and path.endswith("/"):
            new_path += "/"
        state.path = new_path

    def describe(self) -> str:
        return f"[StripPrefix parts = {self.parts}]"


@dataclass(frozen=True, slots=True)
class PrefixPath:
    """`PrefixPath=/prefix`: put the prefix (URI template variables expanded) before the path."""

    prefix: str

    name = "PrefixPath"

    @staticmethod
    def create(args: Mapping[str, ArgValue]) -> PrefixPath:
        prefix = get_str(args, "prefix")
        if not prefix.startswith("/"):
            raise SpecError(f"prefix must start with '/', not {prefix!r}", key="prefix")
        return PrefixPath(prefix)

    def apply(self, state: PlanState) -> None:
        state.path = expand(self.prefix, state.variables, encode=True) + state.path

    def describe(self) -> str:
        return f"[PrefixPath prefix = '{self.prefix}']"


@dataclass(frozen=True, slots=True)
class SetPath:
    """`SetPath=/{segment}`: replace the path by a URI template over the Path predicate's variables."""

    template: str

    name = "SetPath"

    @staticmethod
    def create(args: Mapping[str, ArgValue]) -> SetPath:
        template = get_str(args, "template")
        if not template.startswith("/"):
            raise SpecError(f"template must start with '/', not {template!r}", key="template")
        return SetPath(template)

    def apply(self, state: PlanState) -> None:
        state.path = expand(self.template, state.variables, encode=True)

    def describe(self) -> str:
        return f"[SetPath template = '{self.template}']"


def rewrite_path(definition: Definition) -> RewritePath:
    """Build RewritePath from its definition."""
    return RewritePath.create(bind(definition, ("regexp", "replacement")))


def strip_prefix(definition: Definition) -> StripPrefix:
    """Build StripPrefix from its definition."""
    return StripPrefix.create(bind(definition, ("parts",)))


def prefix_path(definition: Definition) -> PrefixPath:
    """Build PrefixPath from its definition."""
    return PrefixPath.create(bind(definition, ("prefix",)))


def set_path(definition: Definition) -> SetPath:
    """Build SetPath from its definition."""
    return SetPath.create(bind(definition, ("template",)))
