"""What changing the client-side shard list moves (pure): which users leave which shard for which, which idempotency
markers must follow them (the tool is wsnode/reshard.py, docs/scaling.md).

Shards are named by their own id (`wsgate:shard:id`, wsnode/shard_agreement.py), not by URL, so a server spelled
two ways in the two lists is still one server. A user's keys belong on `new[shard_of(user, len(new))]`; a user
found anywhere else moves there.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from wsnode.sharding import shard_of

# The per-user keys a move carries (wsnode/keys.py, store.py): messages, counter, unacked ids, unread counts,
# revocation and publish budget. `:sessions` stays: each record belongs to the node that wrote it on that shard,
# which removes it when the session ends (or its heartbeat cleaning does when the node dies); a copy elsewhere
# would outlive it.
MOVED_SUFFIXES = ("seq", "msgs", "unacked", "unread", "revoked", "publish_budget")
USER_SUFFIXES = (*MOVED_SUFFIXES, "sessions")
_GLOB_SPECIAL = "\\*?[]"


@dataclass(frozen=True, slots=True)
class Move:
    """One user's keys go from shard id `source` to shard id `target`."""

    user: str
    source: str
    target: str


@dataclass(slots=True)
class Report:
    """What a run did (or, dry, would do)."""

    users_scanned: int = 0
    users_moved: int = 0
    keys_moved: int = 0
    markers_copied: int = 0
    markers_deleted: int = 0
    messages_renumbered: int = 0

    def line(self, *, dry_run: bool) -> str:
        verb = "would move" if dry_run else "moved"
        return (f"users scanned: {self.users_scanned}; users {verb}: {self.users_moved}; keys {verb}: "
                f"{self.keys_moved}; idempotency markers copied: {self.markers_copied}, deleted: "
                f"{self.markers_deleted}; messages renumbered (the target had given out their id): "
                f"{self.messages_renumbered}")


def glob_escape(text: str) -> str:
    """`text` as a literal inside a SCAN MATCH pattern."""
    return "".join(f"\\{c}" if c in _GLOB_SPECIAL else c for c in text)


def user_pattern(prefix: str) -> str:
    return glob_escape(f"{prefix}wsgate:user:") + "*"


def staged_pattern(prefix: str) -> str:
    return glob_escape(f"{prefix}wsgate:reshard:") + "*"


def marker_pattern(prefix: str) -> str:
    return glob_escape(f"{prefix}wsgate:dedupe:") + "*"


def staged_base(prefix: str, user: str) -> str:
    """Stem of a user's keys set aside on the source shard while they move (see reshard.py)."""
    return f"{prefix}wsgate:reshard:{user}"


def _user_in(key: str, stem: str, suffixes: Sequence[str]) -> str | None:
    if not key.startswith(stem):
        return None
    user, sep, suffix = key[len(stem):].rpartition(":")
    return user if sep and user and suffix in suffixes else None


def user_of(key: str, prefix: str) -> str | None:
    """The user of a per-user key (`<prefix>wsgate:user:<user>:<suffix>`, the user may hold ':'), or None."""
    return _user_in(key, f"{prefix}wsgate:user:", USER_SUFFIXES)


def staged_user_of(key: str, prefix: str) -> str | None:
    """The user of a key set aside by a move that has not finished, or None."""
    return _user_in(key, f"{prefix}wsgate:reshard:", MOVED_SUFFIXES)


def destination(user: str, new_ids: Sequence[str]) -> str:
    """The shard id that holds `user` under the new list."""
    return new_ids[shard_of(user, len(new_ids))]


def plan_moves(found: Mapping[str, Iterable[str]], new_ids: Sequence[str]) -> list[Move]:
    """The moves for the users found with keys on each shard id (`found`), sorted by source, then user."""
    moves = []
    for source in sorted(found):
        for user in sorted(set(found[source])):
            target = destination(user, new_ids)
            if target != source:
                moves.append(Move(user, source, target))
    return moves


def marker_users(value: str) -> list[str] | None:
    """The users a push's idempotency marker stored messages for (the push script's `ids`), or None when the marker
    names none (a push that stored nothing: its users are not in it) or is not a marker."""
    try:
        result = json.loads(value)
        ids = json.loads(result[2]) if isinstance(result, list) and len(result) == 4 else None
    except (ValueError, TypeError):
        return None
    if not isinstance(ids, dict) or not ids:
        return None
    return sorted(str(user) for user in ids)


def marker_targets(source: str, users: Iterable[str], new_ids: Sequence[str]) -> tuple[list[str], bool]:
    """Where a marker on `source` naming `users` must also be, and whether `source` still needs it.

    A retry of the push runs one script per shard of its users under the new list; each must find the marker, or it
    stores that shard's part again.
    """
    wanted = {destination(user, new_ids) for user in users}
    return sorted(wanted - {source}), source in wanted


def list_problem(old: Sequence[str], new: Sequence[str]) -> str | None:
    """Why two shard lists (of shard ids) cannot be resharded between, or None."""
    for name, ids in (("--from", old), ("--to", new)):
        if not ids:
            return f"{name} names no shard"
        if len(set(ids)) != len(ids):
            return f"{name} names one Redis twice (two URLs reach the same shard id)"
    return None
