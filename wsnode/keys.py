"""Redis key and channel names (pure); every name starts with the configured prefix.

The Lua scripts in store.py build the same per-user names from the prefix; keep the two in step.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Keys:
    """Names under one prefix."""

    prefix: str = ""

    def session(self, session_id: str) -> str:
        """Hash user/node/since of one session (expires unless its node refreshes it)."""
        return f"{self.prefix}wsgate:session:{session_id}"

    def user_sessions(self, user: str) -> str:
        """Sorted set `<node>|<session>` scored by expiry (epoch ms)."""
        return f"{self.prefix}wsgate:user:{user}:sessions"

    def user_base(self, user: str) -> str:
        """Stem of the per-user store keys (:seq, :msgs, :unacked, :unread)."""
        return f"{self.prefix}wsgate:user:{user}"

    @property
    def all_sessions(self) -> str:
        """Sorted set of every session id scored by expiry (epoch ms)."""
        return f"{self.prefix}wsgate:sessions"

    @property
    def nodes(self) -> str:
        """Sorted set of live node ids scored by expiry (epoch ms)."""
        return f"{self.prefix}wsgate:nodes"

    def node_channel(self, node_id: str) -> str:
        """Pub/sub channel of one node."""
        return f"{self.prefix}wsgate:node:{node_id}"

    @property
    def broadcast_channel(self) -> str:
        """Pub/sub channel every node listens to."""
        return f"{self.prefix}wsgate:broadcast"

    def dedupe(self, key: str) -> str:
        """Marker of a push already handled under an idempotency key (its result as JSON)."""
        return f"{self.prefix}wsgate:dedupe:{key}"

    @property
    def push_stream(self) -> str:
        """Stream backends add pushes to (field `payload`)."""
        return f"{self.prefix}wsgate:push"

    @property
    def publish_stream(self) -> str:
        """Stream client `publish` frames are handed to backends on."""
        return f"{self.prefix}wsgate:publish"
