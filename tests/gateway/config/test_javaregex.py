"""Java regex and replacement syntax translated to Python's re."""

from __future__ import annotations

import pytest

from gateway.config.javaregex import JavaRegexError, compile_java_regex, group_names, translate_replacement


@pytest.mark.parametrize(
    ("java", "text", "matches"),
    [
        ("/foo/(?<segment>.*)", "/foo/bar", True),
        ("(?<a>x)\\k<a>", "xx", True),
        ("(?<a>x)\\k<a>", "xy", False),
        ("(?<=a)b", "b", False),
        ("a*+a", "aaa", False),  # possessive: gives nothing back
        ("(?>a|ab)c", "abc", False),  # atomic group
        ("\\Q.*\\E", ".*", True),
        ("\\Q.*\\E", "ab", False),
        ("a\\z", "a", True),
        ("\\x{41}", "A", True),
        ("(?i)abc", "ABC", True),
        ("[a-z&&]", "&", False),  # '&' alone is a literal class member, but '&&' is refused below
        ("\\h+", " \t", True),
        ("[--]", "-", True),
        ("a\\Rb", "a\r\nb", True),
    ],
)
def test_javaregex_translates_java_syntax(java: str, text: str, matches: bool) -> None:
    if "&&" in java:
        with pytest.raises(JavaRegexError):
            compile_java_regex(java)
        return
    assert (compile_java_regex(java).fullmatch(text) is not None) is matches


@pytest.mark.parametrize(
    "java",
    ["\\p{Alpha}", "[a[b]]", "a(?i)b", "\\G", "(?<1x>a)", "[abc", "abc\\", "(unclosed", "\\y"],
)
def test_javaregex_refuses_what_it_cannot_translate(java: str) -> None:
    with pytest.raises(JavaRegexError):
        compile_java_regex(java)


@pytest.mark.parametrize(
    ("regex", "replacement", "text", "expected"),
    [
        ("/foo/(?<id>.*)", "/$\\{id}", "/foo/1", "/1"),
        ("/foo/(?<id>.*)", "/${id}", "/foo/1", "/1"),
        ("(a)(b)", "$2$1", "ab", "ba"),
        ("(a)", "$10", "a", "a0"),  # Java: group 10 does not exist, so $1 then '0'
        ("x", "\\$1", "x", "$1"),
        ("x", "a\\\\b", "x", "a\\b"),
        ("(?<g>x)?y", "[${g}]", "y", "[]"),  # an unmatched group is empty, as in Java
    ],
)
def test_javaregex_replacement_like_matcher_replace_all(regex: str, replacement: str, text: str,
                                                        expected: str) -> None:
    pattern = compile_java_regex(regex)
    assert pattern.sub(translate_replacement(replacement, pattern), text) == expected


@pytest.mark.parametrize("replacement", ["$", "${x", "${nope}", "$2", "tail\\"])
def test_javaregex_refuses_bad_replacements(replacement: str) -> None:
    with pytest.raises(JavaRegexError):
        translate_replacement(replacement, compile_java_regex("(?<g>a)"))


def test_javaregex_group_names_in_order() -> None:
    assert group_names("/(?<a>x)/(?<=y)(?<bc2>z)") == ["a", "bc2"]
