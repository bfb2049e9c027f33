"""Binding SCG predicate/filter arguments: shortcut (`Name=a, b`) and expanded (`name:` + `args:`) forms; pure.

The loader hands each definition over as a name and ordered `(key, value)` pairs; shortcut values arrive
under SCG's generated keys `_genkey_0`, `_genkey_1`, ... and are bound to a factory's fields by position,
as SCG's `ShortcutConfigurable` does (`DEFAULT`, `GATHER_LIST`, `GATHER_LIST_TAIL_FLAG`). Keys are compared
in relaxed form, like Spring's binder: `matchTrailingSlash`, `match-trailing-slash` and `match_trailing_slash`
are one key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

ArgValue = str | tuple[str, ...]
GENKEY = "_genkey_"


class SpecError(ValueError):
    """Bad arguments for a predicate or filter; `key` names the argument when there is one."""

    def __init__(self, message: str, *, key: str = "") -> None:
        super().__init__(message)
        self.key = key


class Unsupported(SpecError):
    """A predicate or filter name wsgate knows but refuses (SCG 4.x dropped it, or it needs Java code): the loader
    treats it like an unknown name, so `wsgate.unknown-filters: warn` leaves it out with this reason."""


class Shortcut(Enum):
    """How shortcut values map to fields (SCG's ShortcutConfigurable.ShortcutType)."""

    DEFAULT = "default"
    GATHER_LIST = "gather-list"
    GATHER_LIST_TAIL_FLAG = "gather-list-tail-flag"


@dataclass(frozen=True, slots=True)
class Definition:
    """One predicate or filter as written: its name and its arguments in file order."""

    name: str
    args: tuple[tuple[str, ArgValue], ...] = ()

    @staticmethod
    def shortcut(text: str) -> Definition:
        """Parse SCG's `Name=a, b` (values split on ',' and trimmed)."""
        name, eq, rest = text.partition("=")
        name = name.strip()
        if not name:
            raise SpecError(f"no name in {text!r}")
        values = [value.strip() for value in rest.split(",")] if eq else []
        return Definition(name, tuple((f"{GENKEY}{i}", value) for i, value in enumerate(values)))


def relaxed(key: str) -> str:
    """A key in Spring's relaxed form: lower case without '-' or '_' (dots kept)."""
    return re.sub(r"[-_]", "", key).lower()


def bind(
    definition: Definition, fields: Sequence[str], kind: Shortcut = Shortcut.DEFAULT
) -> dict[str, ArgValue]:
    """Map a definition's arguments to `fields` (relaxed keys); unknown arguments raise SpecError."""
    generated = [value for key, value in definition.args if key.startswith(GENKEY)]
    bound: dict[str, ArgValue] = {}
    if generated:
        if kind is Shortcut.DEFAULT:
            if len(generated) > len(fields):
                raise SpecError(f"{definition.name} takes at most {len(fields)} argument(s) ({', '.join(fields)})")
            for field, value in zip(fields, generated, strict=False):
                bound[relaxed(field)] = value
        else:
            values = [item for value in generated for item in _flatten(value)]
            tail_flag = kind is Shortcut.GATHER_LIST_TAIL_FLAG and len(fields) > 1
            if tail_flag and values and values[-1].lower() in ("true", "false"):
                bound[relaxed(fields[1])] = values[-1]
                values = values[:-1]
            bound[relaxed(fields[0])] = tuple(values)
    known = {relaxed(field) for field in fields}
    for key, value in definition.args:
        if key.startswith(GENKEY):
            continue
        rkey = relaxed(key)
        if rkey not in known:
            raise SpecError(f"{definition.name} has no argument {key!r} (expected: {', '.join(fields)})", key=key)
        bound[rkey] = value
    return bound


def _flatten(value: ArgValue) -> tuple[str, ...]:
    return value if isinstance(value, tuple) else (value,)


def get_str(args: Mapping[str, ArgValue], field: str, *, default: str | None = None) -> str:
    """A single string argument; SpecError when missing (and no default) or given as a list."""
    value = args.get(relaxed(field))
    if value is None:
        if default is None:
            raise SpecError(f"missing argument {field!r}", key=field)
        return default
    if isinstance(value, tuple):
        if len(value) != 1:
            raise SpecError(f"argument {field!r} must be one value", key=field)
        return value[0]
    return value


def get_list(args: Mapping[str, ArgValue], field: str, *, required: bool = True) -> tuple[str, ...]:
    """A list argument; a single string counts as a one-element list, and 'a, b' is split like SCG's binder."""
    value = args.get(relaxed(field))
    if value is None:
        if required:
            raise SpecError(f"missing argument {field!r}", key=field)
        return ()
    items = value if isinstance(value, tuple) else tuple(part.strip() for part in value.split(","))
    items = tuple(item for item in items if item)
    if required and not items:
        raise SpecError(f"argument {field!r} is empty", key=field)
    return items


def get_bool(args: Mapping[str, ArgValue], field: str, *, default: bool) -> bool:
    """A boolean argument: true/false (any case)."""
    if relaxed(field) not in args:
        return default
    text = get_str(args, field).strip().lower()
    if text not in ("true", "false"):
        raise SpecError(f"argument {field!r} must be true or false, not {text!r}", key=field)
    return text == "true"


def get_int(args: Mapping[str, ArgValue], field: str, *, default: int | None = None, minimum: int = 0) -> int:
    """An integer argument >= minimum."""
    if relaxed(field) not in args and default is not None:
        return default
    text = get_str(args, field).strip()
    try:
        number = int(text)
    except ValueError:
        raise SpecError(f"argument {field!r} must be an integer, not {text!r}", key=field) from None
    if number < minimum:
        raise SpecError(f"argument {field!r} must be >= {minimum}, not {number}", key=field)
    return number


def get_duration_s(args: Mapping[str, ArgValue], field: str, *, default: float | None = None) -> float | None:
    """A Spring `Duration` argument (`10ms`, `1s`, `PT1S`, a bare number in ms) in seconds."""
    from gateway.config.nodes import parse_duration_s  # imported here: confignodes imports this module

    if relaxed(field) not in args:
        return default
    try:
        return parse_duration_s(get_str(args, field), default_unit="ms")
    except ValueError as exc:
        raise SpecError(str(exc), key=field) from None


_DATA_SIZE = re.compile(r"(\d+)\s*(B|KB|MB|GB|TB)?", re.IGNORECASE)
_DATA_UNITS = {"b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3, "tb": 1024**4}


def get_data_size(args: Mapping[str, ArgValue], field: str, *, default: int) -> int:
    """A Spring `DataSize` argument (`5000000`, `5MB`, `16KB`; binary units as Spring) in bytes."""
    if relaxed(field) not in args:
        return default
    text = get_str(args, field).strip()
    found = _DATA_SIZE.fullmatch(text)
    if not found:
        raise SpecError(f"argument {field!r} must be a data size such as 5000000, 16KB or 5MB, not {text!r}", key=field)
    return int(found.group(1)) * _DATA_UNITS[(found.group(2) or "B").lower()]


# HttpStatus names SCG accepts where a status is given by name (HttpStatusHolder.parse).
HTTP_STATUS_NAMES = {
    "CONTINUE": 100, "SWITCHING_PROTOCOLS": 101, "OK": 200, "CREATED": 201, "ACCEPTED": 202, "NO_CONTENT": 204,
    "MOVED_PERMANENTLY": 301, "FOUND": 302, "SEE_OTHER": 303, "NOT_MODIFIED": 304, "TEMPORARY_REDIRECT": 307,
    "PERMANENT_REDIRECT": 308, "BAD_REQUEST": 400, "UNAUTHORIZED": 401, "PAYMENT_REQUIRED": 402, "FORBIDDEN": 403,
    "NOT_FOUND": 404, "METHOD_NOT_ALLOWED": 405, "NOT_ACCEPTABLE": 406, "REQUEST_TIMEOUT": 408, "CONFLICT": 409,
    "GONE": 410, "PAYLOAD_TOO_LARGE": 413, "CONTENT_TOO_LARGE": 413, "UNSUPPORTED_MEDIA_TYPE": 415,
    "I_AM_A_TEAPOT": 418, "UNPROCESSABLE_ENTITY": 422, "TOO_MANY_REQUESTS": 429,
    "REQUEST_HEADER_FIELDS_TOO_LARGE": 431, "INTERNAL_SERVER_ERROR": 500, "NOT_IMPLEMENTED": 501,
    "BAD_GATEWAY": 502, "SERVICE_UNAVAILABLE": 503, "GATEWAY_TIMEOUT": 504,
}


def parse_status(text: str, *, field: str = "status") -> int:
    """An HTTP status given as a number (100-599) or an HttpStatus name (`BAD_GATEWAY`)."""
    text = text.strip()
    if text.isdigit() and 100 <= int(text) <= 599:
        return int(text)
    status = HTTP_STATUS_NAMES.get(text.upper().replace("-", "_"))
    if status is None:
        raise SpecError(f"bad HTTP status {text!r}", key=field)
    return status


def refuse_shortcut(definition: Definition, fields: str) -> None:
    """SpecError for a factory SCG gives no shortcut field order (its shortcut form fails there too)."""
    if any(key.startswith(GENKEY) for key, _ in definition.args):
        raise SpecError(f"{definition.name} has no shortcut form in SCG; use `name: {definition.name}` with "
                        f"`args:` ({fields})")
