"""Filters that answer the request themselves, with SCG's semantics: RedirectTo, RequestSize, RequestHeaderSize;
pure. Each sets `PlanState.answer`; the filters after it do not run and nothing is forwarded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gateway.model import LocalAnswer
from gateway.routing.factory import (
    Definition,
    SpecError,
    bind,
    get_bool,
    get_data_size,
    get_str,
    parse_status,
    refuse_shortcut,
)
from gateway.routing.filters.base import PlanState, check_header_name, check_header_value


@dataclass(frozen=True, slots=True)
class RedirectTo:
    """`RedirectTo=302, https://acme.org[, includeRequestParams]`: answer a 3xx with that Location."""

    status: int
    url: str
    include_request_params: bool = False

    name = "RedirectTo"

    def apply(self, state: PlanState) -> None:
        location = self.url
        if self.include_request_params and state.query:
            location += ("&" if "?" in location else "?") + state.query
        state.answer = LocalAnswer(self.status, (("Location", location),))

    def describe(self) -> str:
        return f"[RedirectTo {self.status} = '{self.url}', includeRequestParams = " \
               f"{str(self.include_request_params).lower()}]"


def readable_bytes(count: int) -> str:
    """SCG's `getReadableByteCount`: decimal units, one decimal (`6.0 MB`)."""
    if count < 1000:
        return f"{count} B"
    exp = int(math.log(count) / math.log(1000))
    return f"{count / 1000 ** exp:.1f} {'kMGTPE'[exp - 1]}B"


@dataclass(frozen=True, slots=True)
class RequestSize:
    """`RequestSize` (args: maxSize, default 5000000 B): a declared Content-Length above it is answered 413."""

    max_bytes: int

    name = "RequestSize"

    def apply(self, state: PlanState) -> None:
        declared = state.request.header("content-length")
        if not declared or not declared.strip().isdigit():
            return
        size = int(declared.strip())
        if size > self.max_bytes:
            message = (f"Request size is larger than permissible limit. Request size is {readable_bytes(size)} "
                       f"where permissible limit is {readable_bytes(self.max_bytes)}")
            state.answer = LocalAnswer(413, (("errorMessage", message),))

    def describe(self) -> str:
        return f"[RequestSize max = {self.max_bytes}B]"


@dataclass(frozen=True, slots=True)
class RequestHeaderSize:
    """`RequestHeaderSize=maxSize[, errorHeaderName]` (16000 B): any header (name plus all its values) above it
    is answered 431, naming each such header in `errorMessage` (or errorHeaderName)."""

    max_bytes: int
    error_header: str = "errorMessage"

    name = "RequestHeaderSize"

    def apply(self, state: PlanState) -> None:
        sizes: dict[str, tuple[str, int]] = {}
        for key, value in state.headers:
            first, total = sizes.get(key.lower(), (key, 0))
            if total == 0:
                total = len(first.encode())
            sizes[key.lower()] = (first, total + len(value.encode()))
        too_long = [(name, size) for name, size in sizes.values() if size > self.max_bytes]
        if too_long:
            message = f"Request Header/s size is larger than permissible limit ({self.max_bytes}B)." + "".join(
                f" Request Header/s size for '{name}' is {size}B." for name, size in too_long)
            state.answer = LocalAnswer(431, ((self.error_header, message),))

    def describe(self) -> str:
        return f"[RequestHeaderSize maxSize = {self.max_bytes}B]"


def redirect_to(definition: Definition) -> RedirectTo:
    """Build RedirectTo (status, url, includeRequestParams); the status must be 3xx."""
    args = bind(definition, ("status", "url", "includeRequestParams"))
    status = parse_status(get_str(args, "status"))
    if not 300 <= status <= 399:
        raise SpecError(f"status must be a 3xx code, but was {get_str(args, 'status')}", key="status")
    url = check_header_value(get_str(args, "url"), "url")
    return RedirectTo(status, url, get_bool(args, "includeRequestParams", default=False))


def request_size(definition: Definition) -> RequestSize:
    """Build RequestSize (args: maxSize; SCG gives it no shortcut form)."""
    refuse_shortcut(definition, "maxSize")
    max_bytes = get_data_size(bind(definition, ("maxSize",)), "maxSize", default=5_000_000)
    if max_bytes <= 0:
        raise SpecError("maxSize must be greater than 0", key="maxSize")
    return RequestSize(max_bytes)


def request_header_size(definition: Definition) -> RequestHeaderSize:
    """Build RequestHeaderSize (maxSize, errorHeaderName)."""
    args = bind(definition, ("maxSize", "errorHeaderName"))
    header = check_header_name(get_str(args, "errorHeaderName", default="errorMessage"), "errorHeaderName")
    return RequestHeaderSize(get_data_size(args, "maxSize", default=16_000), header)
