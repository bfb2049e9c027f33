"""Redis key and channel names (pure); every name starts with the configured prefix.

The Lua scripts in store.py build the same per-user names from the prefix; keep the two in step.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Keys:
    """Names under one prefix."""

    prefix: str = ""

    def user_sessions(self, user: str) -> str:
        """Sorted set `<node>|<session>` scored by the session's start (epoch ms); read only for live nodes."""
        return f"{self.prefix}wsgate:user:{user}:sessions"

    def user_base(self, user: str) -> str:
        """Stem of the per-user store keys (:seq, :msgs, :unacked, :unread)."""
        return f"{self.prefix}wsgate:user:{user}"

    def user_revoked(self, user: str) -> str:
        """Epoch second before which the user's tokens are refused (`disconnect?revoke=true`); expires."""
        return f"{self.prefix}wsgate:user:{user}:revoked"

    def user_publish_budget(self, user: str) -> str:
        """The user's publish token buckets (frames and bytes), shared by all their sessions on every node."""
        return f"{self.prefix}wsgate:user:{user}:publish_budget"

    @property
    def all_sessions(self) -> str:
        """Sorted set of every session id scored by its start (epoch ms)."""
        return f"{self.prefix}wsgate:sessions"

    @property
    def nodes(self) -> str:
        """Sorted set of known node ids scored by liveness expiry (epoch ms); no TTL, dead ones are cleaned."""
        return f"{self.prefix}wsgate:nodes"

    def node_alive(self, node_id: str) -> str:
        """A node's liveness key (PX = session TTL), set by its heartbeat once per refresh period."""
        return f"{self.prefix}wsgate:node:{node_id}:alive"

    def node_sessions(self, node_id: str) -> str:
        """Hash session id -> user of one node's sessions (what cleaning a dead node removes)."""
        return f"{self.prefix}wsgate:node:{node_id}:sessions"

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
    def shard_id(self) -> str:
        """A shard's own random id, set once by the first node that reaches it."""
        return f"{self.prefix}wsgate:shard:id"

    @property
    def shard_list(self) -> str:
        """JSON list of the shard ids in the order every node's `--redis` list names them (kept on every shard)."""
        return f"{self.prefix}wsgate:shard:list"

    @property
    def push_stream(self) -> str:
        """Stream backends add pushes to (field `payload`)."""
        return f"{self.prefix}wsgate:push"

    @property
    def publish_stream(self) -> str:
        """Stream client `publish` frames are handed to backends on."""
        return f"{self.prefix}wsgate:publish"

    @property
    def publish_stream_bytes(self) -> str:
        """Bytes the publish stream holds (kept by the append script in limits.py, which trims by it)."""
        return f"{self.prefix}wsgate:publish:bytes"
