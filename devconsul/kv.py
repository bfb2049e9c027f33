"""Consul's key/value store with modify indexes, check-and-set and tombstones for list indexes (pure)."""

from __future__ import annotations

from dataclasses import dataclass

from devconsul.catalog import TOPIC_KV, Changes, IndexClock
from devconsul.errors import BadRequest, PayloadTooLarge

MAX_VALUE_BYTES = 512 * 1024


@dataclass(frozen=True, slots=True)
class KVEntry:
    """One stored key."""

    key: str
    value: bytes
    flags: int
    create_index: int
    modify_index: int
    lock_index: int = 0


class KVStore:
    """Keys and values sharing the agent's index clock."""

    def __init__(self, clock: IndexClock) -> None:
        self.clock = clock
        self.table_index = clock.value
        self._entries: dict[str, KVEntry] = {}
        self._tombstones: dict[str, int] = {}

    def get(self, key: str) -> tuple[int, KVEntry | None]:
        """The entry at `key` and the index to block on (its ModifyIndex, else the table's)."""
        entry = self._entries.get(key)
        return (entry.modify_index if entry else max(self.table_index, 1)), entry

    def list_prefix(self, prefix: str) -> tuple[int, list[KVEntry]]:
        """Entries under `prefix` sorted by key, with the index of the newest change under it."""
        entries = [e for k, e in sorted(self._entries.items()) if k.startswith(prefix)]
        if not prefix:
            return max(self.table_index, 1), entries
        index = max([e.modify_index for e in entries]
                    + [i for k, i in self._tombstones.items() if k.startswith(prefix)], default=0)
        return (index or max(self.table_index, 1)), entries

    def keys(self, prefix: str, separator: str) -> tuple[int, list[str]]:
        """Keys under `prefix`, rolled up at the first `separator` after it when one is given."""
        index, entries = self.list_prefix(prefix)
        keys: list[str] = []
        for entry in entries:
            key = entry.key
            if separator:
                cut = key.find(separator, len(prefix))
                if cut >= 0:
                    key = key[:cut + len(separator)]
            if not keys or keys[-1] != key:
                keys.append(key)
        return index, keys

    def put(self, key: str, value: bytes, *, flags: int = 0, cas: int | None = None) -> tuple[bool, Changes]:
        """Store `value`; with `cas`, only when the key's ModifyIndex equals it (0: only when absent)."""
        if not key:
            raise BadRequest("Missing key name")
        if len(value) > MAX_VALUE_BYTES:
            raise PayloadTooLarge(f"Request body({len(value)} bytes) too large, max size: {MAX_VALUE_BYTES} bytes.")
        existing = self._entries.get(key)
        if cas is not None and cas != (existing.modify_index if existing else 0):
            return False, Changes()
        idx = self.clock.advance()
        self._entries[key] = KVEntry(key, value, flags, existing.create_index if existing else idx, idx)
        self._tombstones.pop(key, None)
        self.table_index = idx
        return True, Changes(frozenset({TOPIC_KV}))

    def delete(self, key: str, *, recurse: bool = False, cas: int | None = None) -> tuple[bool, Changes]:
        """Delete `key` (or every key under it with `recurse`); with `cas`, only when its ModifyIndex matches."""
        if not key and not recurse:
            raise BadRequest("Missing key name")
        if cas is not None:
            existing = self._entries.get(key)
            if cas == 0 or existing is None or existing.modify_index != cas:
                return False, Changes()
        doomed = [k for k in self._entries if (k.startswith(key) if recurse else k == key)]
        if not doomed:
            return True, Changes()
        idx = self.clock.advance()
        for doomed_key in doomed:
            del self._entries[doomed_key]
            self._tombstones[doomed_key] = idx
        self.table_index = idx
        return True, Changes(frozenset({TOPIC_KV}))
