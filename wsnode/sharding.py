"""Which Redis shard holds a user (pure): jump consistent hash of crc32(user) over S shards (docs/scaling.md, 3A).

Every key of user U (sessions, store, unread counts, idempotency markers of pushes to U) lives on `shard_of(U, S)`,
so the push script that stores and publishes U's messages runs on one Redis, and U's publications leave it in id
order. Jump hashing moves only ~1/S of the users when S grows to S + 1 (Lamping & Veach, "A Fast, Minimal Memory,
Consistent Hash Algorithm", 2014); crc32 makes the choice the same in every process and every language.

`Shards` holds one client per shard; it is generic over the client type, so this module imports no Redis library.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Sequence
from typing import Generic, TypeVar

_MULTIPLIER = 2862933555777941757  # the 64-bit LCG of the paper
_MASK64 = (1 << 64) - 1

C = TypeVar("C")


def jump_hash(key: int, buckets: int) -> int:
    """The bucket in [0, buckets) of a 64-bit `key`."""
    if buckets < 1:
        raise ValueError("jump_hash needs at least one bucket")
    key &= _MASK64
    bucket, candidate = -1, 0
    while candidate < buckets:
        bucket = candidate
        key = (key * _MULTIPLIER + 1) & _MASK64
        candidate = int((bucket + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return bucket


def shard_of(user: str, shards: int) -> int:
    """The shard of `user` among `shards`: jump_hash(crc32(utf-8 of user), shards)."""
    if shards == 1:
        return 0
    return jump_hash(zlib.crc32(user.encode()), shards)


def group_by_shard(users: Iterable[str], shards: int) -> dict[int, list[str]]:
    """Users per shard, each list in the order given (a multi-user push runs one script per shard)."""
    groups: dict[int, list[str]] = {}
    for user in users:
        groups.setdefault(shard_of(user, shards), []).append(user)
    return groups


class Shards(Generic[C]):
    """One client per shard: `for_user(U)`, `all`, `primary` (shard 0: broadcasts, streams, node-wide markers)."""

    __slots__ = ("_clients",)

    def __init__(self, clients: Sequence[C]) -> None:
        if not clients:
            raise ValueError("Shards needs at least one client")
        self._clients = tuple(clients)

    @property
    def count(self) -> int:
        """The number of shards."""
        return len(self._clients)

    @property
    def all(self) -> tuple[C, ...]:
        """Every shard's client, by shard index."""
        return self._clients

    @property
    def primary(self) -> C:
        """Shard 0."""
        return self._clients[0]

    def index_of(self, user: str) -> int:
        """The shard index of `user`."""
        return shard_of(user, len(self._clients))

    def for_user(self, user: str) -> C:
        """The client of `user`'s shard."""
        return self._clients[shard_of(user, len(self._clients))]

    def group(self, users: Iterable[str]) -> dict[int, list[str]]:
        """Users per shard index (see group_by_shard)."""
        return group_by_shard(users, len(self._clients))


def shard_list_mismatch(urls: Sequence[str], observed: Sequence[str], stored: str | None) -> str | None:
    """Why this node's shard list is not the one `stored` on a shard (a JSON list of shard ids), or None.

    `observed[i]` is the id that shard `urls[i]` carries (each Redis keeps a random id of its own). Every node must
    see the same servers in the same order, or users land on different shards from node to node.
    """
    if stored is None:
        return None
    try:
        expected = json.loads(stored)
    except ValueError:
        return f"the stored shard list is not JSON: {stored[:80]!r}"
    if not isinstance(expected, list) or not all(isinstance(item, str) for item in expected):
        return f"the stored shard list is not a list of ids: {stored[:80]!r}"
    if list(observed) == expected:
        return None
    if len(observed) != len(expected):
        return (f"this node lists {len(observed)} Redis shard(s) ({', '.join(urls)}), the nodes already using them "
                f"list {len(expected)}: every node needs the same --redis list (to change it, use the procedure in "
                f"docs/scaling.md)")
    wrong = []
    for index, (url, shard_id) in enumerate(zip(urls, observed, strict=True)):
        if shard_id != expected[index]:
            elsewhere = expected.index(shard_id) if shard_id in expected else None
            where = (f"the other nodes use it as shard {elsewhere}" if elsewhere is not None
                     else "it is not in the other nodes' list")
            wrong.append(f"shard {index} {url} ({where})")
    return ("this node's --redis list differs from the one the other nodes use: " + "; ".join(wrong)
            + " (every node needs the same list in the same order)")
