"""Java regular expressions and replacement strings, as SCG's users write them, translated to Python's `re`.

Python 3.11 already shares most of Java's syntax (possessive quantifiers, atomic groups, lookaround); what
differs is translated here: `(?<name>` groups, `\\k<name>` back-references, `\\Q...\\E` quoting, `\\z`/`\\Z`,
`\\h`/`\\v`, `\\x{...}`, and replacement strings (`$1`, `${name}`, SCG's `$\\{name}`, `\\$`). What cannot be
translated faithfully (`\\p{...}` classes, nested or intersected character classes, `\\G`, flags in mid-pattern)
is refused with a `JavaRegexError` rather than silently meaning something else.
"""

from __future__ import annotations

import re
import warnings

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]*")
_SIMPLE_ESCAPES = set("dDsSwWbBAtnrfaeu0123456789\\.^$|?*+()[]{}/-")
_HSPACE = r"[ \t\xa0\u1680\u180e\u2000-\u200a\u202f\u205f\u3000]"
_VSPACE = r"[\n\x0b\f\r\x85\u2028\u2029]"


class JavaRegexError(ValueError):
    """A Java regex or replacement that cannot be used; the message says why."""


def group_names(java_regex: str) -> list[str]:
    """The named groups `(?<name>...)` of a Java regex, in order (no validation)."""
    return re.findall(r"\(\?<([A-Za-z][A-Za-z0-9]*)>", java_regex)


def translate_regex(java_regex: str) -> str:
    """The Python `re` source equivalent to `java_regex`; raises JavaRegexError when there is none."""
    out: list[str] = []
    i = 0
    n = len(java_regex)
    in_class = False
    class_start = 0
    while i < n:
        c = java_regex[i]
        if c == "\\":
            if i + 1 >= n:
                raise JavaRegexError("pattern ends with a lone backslash")
            i, text = _translate_escape(java_regex, i, in_class)
            out.append(text)
            continue
        if in_class:
            if c == "]" and i > class_start:
                in_class = False
                out.append("]")
            elif c == "[":
                raise JavaRegexError("nested character classes ([a[b]]) are not supported")
            elif c == "&" and java_regex.startswith("&&", i):
                raise JavaRegexError("character class intersection (&&) is not supported")
            elif c in "-~|&":
                # Python warns about set operations it may add later ("--", "~~", ...); escaping is always safe.
                out.append("\\" + c if c != "-" or _doubled(java_regex, i) else c)
            else:
                out.append(c)
            i += 1
            continue
        if c == "[":
            in_class = True
            out.append("[")
            i += 1
            if i < n and java_regex[i] == "^":
                out.append("^")
                i += 1
            if i < n and java_regex[i] == "]":
                # A leading ']' is a literal in both dialects.
                out.append("\\]")
                i += 1
            class_start = i
            continue
        if c == "(" and java_regex.startswith("(?", i):
            i, text = _translate_group_open(java_regex, i, out)
            out.append(text)
            continue
        out.append(c)
        i += 1
    if in_class:
        raise JavaRegexError("unterminated character class")
    return "".join(out)


def _doubled(text: str, i: int) -> bool:
    return (i + 1 < len(text) and text[i + 1] == text[i]) or (i > 0 and text[i - 1] == text[i])


def _translate_group_open(src: str, i: int, out: list[str]) -> tuple[int, str]:
    rest = src[i + 2 :]
    if rest.startswith("<") and not rest.startswith(("<=", "<!")):
        end = src.find(">", i + 3)
        name = src[i + 3 : end] if end != -1 else ""
        if end == -1 or not _NAME.fullmatch(name):
            raise JavaRegexError(f"bad group name at offset {i}")
        return end + 1, f"(?P<{name}>"
    flags = re.match(r"([imsuxU-]+)\)", rest)
    if flags:
        if "".join(out) not in ("", "^"):
            raise JavaRegexError("inline flags (?i) are only supported at the start of the pattern")
        # Python's str patterns are Unicode-aware already, so Java's u/U flags have nothing to add.
        kept = flags.group(1).replace("u", "").replace("U", "")
        return i + 2 + flags.end(), f"(?{kept})" if kept.strip("-") else ""
    return i + 2, "(?"


def _translate_escape(src: str, i: int, in_class: bool) -> tuple[int, str]:
    """Translate the escape starting at src[i] == '\\'; returns the next index and the Python text."""
    c = src[i + 1]
    if c == "Q":
        end = src.find("\\E", i + 2)
        literal = src[i + 2 :] if end == -1 else src[i + 2 : end]
        nxt = len(src) if end == -1 else end + 2
        return nxt, "".join("\\" + ch if not ch.isalnum() else ch for ch in literal)
    if c == "k" and not in_class:
        m = re.match(r"<([A-Za-z][A-Za-z0-9]*)>", src[i + 2 :])
        if not m:
            raise JavaRegexError(f"bad named back-reference at offset {i}")
        return i + 2 + m.end(), f"(?P={m.group(1)})"
    if c == "x" and src.startswith("{", i + 2):
        end = src.find("}", i + 3)
        digits = src[i + 3 : end] if end != -1 else ""
        if not re.fullmatch(r"[0-9A-Fa-f]{1,6}", digits) or int(digits, 16) > 0x10FFFF:
            raise JavaRegexError(f"bad \\x{{...}} escape at offset {i}")
        return end + 1, "\\U" + f"{int(digits, 16):08x}"
    if c == "x":
        if not re.fullmatch(r"[0-9A-Fa-f]{2}", src[i + 2 : i + 4]):
            raise JavaRegexError(f"bad \\x escape at offset {i}")
        return i + 4, src[i : i + 4]
    if c == "u":
        if not re.fullmatch(r"[0-9A-Fa-f]{4}", src[i + 2 : i + 6]):
            raise JavaRegexError(f"bad \\u escape at offset {i}")
        return i + 6, src[i : i + 6]
    if c == "z":
        return i + 2, "\\Z"
    if c == "Z":
        return i + 2, "(?=\\n?\\Z)"
    if c == "e":
        return i + 2, "\\x1b"
    if c == "h" and not in_class:
        return i + 2, _HSPACE
    if c == "v" and not in_class:
        return i + 2, _VSPACE
    if c == "R" and not in_class:
        return i + 2, "(?:\\r\\n|" + _VSPACE + ")"
    if c in ("p", "P"):
        raise JavaRegexError("Unicode/POSIX classes (\\p{...}) are not supported")
    if c == "G":
        raise JavaRegexError("\\G is not supported")
    if c.isalpha() and c not in _SIMPLE_ESCAPES:
        raise JavaRegexError(f"unsupported escape \\{c}")
    if not c.isalnum():
        return i + 2, "\\" + c
    return i + 2, src[i : i + 2]


def compile_java_regex(java_regex: str, *, flags: int = 0) -> re.Pattern[str]:
    """Compile a Java regex into a Python pattern; raises JavaRegexError with the reason."""
    source = translate_regex(java_regex)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            return re.compile(source, flags)
    except (re.error, FutureWarning, DeprecationWarning, OverflowError, RecursionError) as exc:
        raise JavaRegexError(f"invalid regex {java_regex!r}: {exc}") from exc


def translate_replacement(java_replacement: str, pattern: re.Pattern[str]) -> str:
    """A Java `Matcher.replaceAll` replacement as a Python `re.sub` template (SCG's `$\\{` spelling accepted)."""
    text = java_replacement.replace("$\\", "$")  # SCG does exactly this before calling replaceAll
    out: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            if i + 1 >= n:
                raise JavaRegexError("replacement ends with a lone backslash")
            out.append(_literal(text[i + 1]))
            i += 2
        elif c == "$":
            if i + 1 < n and text[i + 1] == "{":
                end = text.find("}", i + 2)
                name = text[i + 2 : end] if end != -1 else ""
                if end == -1 or not _NAME.fullmatch(name):
                    raise JavaRegexError(f"bad group reference in replacement at offset {i}")
                if name not in pattern.groupindex:
                    raise JavaRegexError(f"replacement names group {name!r} that the regex does not define")
                out.append(f"\\g<{name}>")
                i = end + 1
            elif i + 1 < n and text[i + 1].isdigit():
                # Java reads as many digits as still form an existing group number.
                j = i + 2
                number = int(text[i + 1])
                if number > pattern.groups:
                    raise JavaRegexError(f"replacement refers to group {number}, the regex has {pattern.groups}")
                while j < n and text[j].isdigit() and number * 10 + int(text[j]) <= pattern.groups:
                    number = number * 10 + int(text[j])
                    j += 1
                out.append(f"\\g<{number}>")
                i = j
            else:
                raise JavaRegexError(f"illegal group reference '$' in replacement at offset {i}")
        else:
            out.append(_literal(c))
            i += 1
    return "".join(out)


def _literal(ch: str) -> str:
    return "\\\\" if ch == "\\" else ch
