"""envelope.text_frame: whole server text frames (RFC 6455 section 5.2) at every payload-length encoding."""

from __future__ import annotations

import struct

import pytest

from wsnode.envelope import text_frame


def _decode(wire: bytes) -> tuple[int, bool, str]:
    """(first byte, mask bit, payload text) of exactly one frame; fails on trailing or missing bytes."""
    first, second = wire[0], wire[1]
    length, pos = second & 0x7F, 2
    if length == 126:
        length, pos = struct.unpack_from("!H", wire, 2)[0], 4
    elif length == 127:
        length, pos = struct.unpack_from("!Q", wire, 2)[0], 10
    assert len(wire) == pos + length
    return first, bool(second & 0x80), wire[pos:].decode()


@pytest.mark.parametrize(("text", "header_bytes"), [
    ("", 2),
    ("x" * 125, 2),
    ("x" * 126, 4),
    ("x" * 65535, 4),
    ("x" * 65536, 10),
    ('{"type":"message","data":"é✓"}', 2),  # length counts UTF-8 bytes, not characters
])
def test_text_frame_encodes_final_unmasked_text(text: str, header_bytes: int) -> None:
    wire = text_frame(text)
    assert _decode(wire) == (0x81, False, text)
    assert len(wire) == header_bytes + len(text.encode())
