"""Redis Cluster hash slots (pure): CRC16-XMODEM of a key's hash tag, mod 16384, as Redis computes them.

A key's tag is the text between its first `{` and the first `}` after it, when that text is not empty; otherwise the
whole key. The node groups a push's users by slot so that each script call touches one slot only (CONTRACT
section 7), and names each user's keys with a tag of their own (keys.py) so that all of them share that slot.
`slot_tag` names one tag per slot, for the node channels of sharded pub/sub (one per node and slot, keys.py).
"""

from __future__ import annotations

import functools

SLOTS = 16384


def _table() -> tuple[int, ...]:
    rows = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        rows.append(crc & 0xFFFF)
    return tuple(rows)


_CRC16 = _table()


def crc16(data: bytes) -> int:
    """CRC16-CCITT (XMODEM), the checksum Redis Cluster hashes keys with."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC16[((crc >> 8) ^ byte) & 0xFF]
    return crc


def hash_tag(key: bytes) -> bytes:
    """The part of `key` Redis hashes: its non-empty `{tag}`, else the whole key."""
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            return key[start + 1:end]
    return key


def key_slot(key: str | bytes) -> int:
    """The slot of `key` (utf-8 when text)."""
    raw = key.encode() if isinstance(key, str) else key
    return crc16(hash_tag(raw)) % SLOTS


@functools.cache
def _slot_tags() -> tuple[int, ...]:
    # About 110,000 numbers cover every slot (0.3 s, once per process, on first use).
    tags = [-1] * SLOTS
    missing, number = SLOTS, 0
    while missing:
        slot = crc16(str(number).encode()) % SLOTS
        if tags[slot] < 0:
            tags[slot] = number
            missing -= 1
        number += 1
    return tuple(tags)


def slot_tag(slot: int) -> str:
    """A hash tag of `slot`: the smallest non-negative integer whose decimal text hashes to it (`{<tag>}` names a
    channel or key in that slot; any process, in any language, finds the same one)."""
    return str(_slot_tags()[slot])
