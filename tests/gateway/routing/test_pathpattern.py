"""Spring's PathPattern rules, table-driven from its documentation and PathPatternTests."""

from __future__ import annotations

import pytest

from gateway.routing.pathpattern import PathPattern, PathPatternError, parse_path


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        # The examples of PathPattern's Javadoc.
        ("/pages/t?st.html", "/pages/test.html", {}),
        ("/pages/t?st.html", "/pages/tXst.html", {}),
        ("/pages/t?st.html", "/pages/toast.html", None),
        ("/resources/*.png", "/resources/image.png", {}),
        ("/resources/*.png", "/resources/css/image.png", None),
        ("/resources/**", "/resources/image.png", {}),
        ("/resources/**", "/resources/css/spring.css", {}),
        ("/resources/{*path}", "/resources/image.png", {"path": "/image.png"}),
        ("/resources/{*path}", "/resources/css/spring.css", {"path": "/css/spring.css"}),
        ("/resources/{filename:\\w+}.dat", "/resources/spring.dat", {"filename": "spring"}),
        # SCG: /ws-svc/** matches the prefix itself, with or without its slash.
        ("/ws-svc/**", "/ws-svc", {}),
        ("/ws-svc/**", "/ws-svc/", {}),
        ("/ws-svc/**", "/ws-svc/websocket", {}),
        ("/ws-svc/**", "/ws-svcx", None),
        ("/ws-svc/**", "/other/ws-svc", None),
        ("/**", "/", {}),
        ("/**", "/a/b", {}),
        # {*v} captures the rest with its leading slash, decoded.
        ("/resources/{*path}", "/resources", {"path": ""}),
        ("/resources/{*path}", "/resources/", {"path": "/"}),
        ("/r/{*path}", "/r/a%20b/c", {"path": "/a b/c"}),
        # Variables: one non-empty segment, decoded, matrix parameters left out.
        ("/red/{segment}", "/red/blue", {"segment": "blue"}),
        ("/red/{segment}", "/red/", None),
        ("/red/{segment}", "/red/blue/green", None),
        ("/red/{segment}", "/red/a%2Fb", {"segment": "a/b"}),
        ("/books/{isbn}", "/books/1111;v=1", {"isbn": "1111"}),
        ("/{a}-{b}", "/x-y", {"a": "x", "b": "y"}),
        ("/{id:\\d+}", "/123", {"id": "123"}),
        ("/{id:\\d+}", "/12a", None),
        ("/{id:\\d{2}}", "/12", {"id": "12"}),
        # '*' needs at least one character inside a path, none at its end after a slash.
        ("/*/bar", "/foo/bar", {}),
        ("/*/bar", "//bar", None),
        ("/a/*", "/a/", {}),
        ("/a/*", "/a", None),
        ("/a/*", "/a/b", {}),
        ("/f*/bar", "/foo/bar", {}),
        # Segments compare decoded.
        ("/a b", "/a%20b", {}),
        ("/caf\u00e9", "/caf%C3%A9", {}),
        # Case matters; separators must match one for one.
        ("/Foo", "/foo", None),
        ("/a/b", "/a//b", None),
        ("/", "/", {}),
        # matchTrailingSlash (SCG's default): a pattern ending in a segment also takes one trailing slash.
        ("/foo", "/foo/", {}),
        ("/foo/{id}", "/foo/1/", {"id": "1"}),
        ("/foo", "/foo//", None),
        ("/foo/", "/foo", None),
        # Without a leading slash SCG adds one.
        ("foo/**", "/foo/x", {}),
    ],
)
def test_pathpattern_matches_like_spring(pattern: str, path: str, expected: dict[str, str] | None) -> None:
    assert PathPattern(pattern).match(path) == expected


@pytest.mark.parametrize(
    ("pattern", "path", "trailing", "expected"),
    [
        ("/foo", "/foo/", False, False),
        ("/foo", "/foo", False, True),
        ("/foo/*", "/foo/x/", False, False),
        ("/foo/*", "/foo/x/", True, True),
    ],
)
def test_pathpattern_match_trailing_slash_flag(pattern: str, path: str, trailing: bool, expected: bool) -> None:
    assert PathPattern(pattern, match_trailing_slash=trailing).matches(path) is expected


@pytest.mark.parametrize(
    "pattern",
    [
        "/a/**/b",  # ** only at the end
        "/a/{*x}/b",  # {*x} only at the end
        "/a/x{*y}",  # {*x} must be a whole segment
        "/{a}/{a}",  # captured twice
        "/{a",  # unclosed
        "/a}",  # stray
        "/{1bad}",  # bad name
        "/{id:[}",  # bad regex
        "/{id:\\p{Alpha}}",  # Java class we do not translate
    ],
)
def test_pathpattern_refuses_bad_patterns(pattern: str) -> None:
    with pytest.raises(PathPatternError):
        PathPattern(pattern)


@pytest.mark.parametrize(
    ("path", "elements"),
    [
        ("/", (None,)),
        ("/a//b", (None, "a", None, None, "b")),
        ("/a%2Fb;x=1/", (None, "a/b", None)),
        ("", ()),
    ],
)
def test_pathpattern_parse_path_elements(path: str, elements: tuple[str | None, ...]) -> None:
    assert parse_path(path) == elements
