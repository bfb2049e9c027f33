"""Redis key and channel names (pure); every name starts with the configured prefix.

The Lua scripts in store.py build the same per-user names from the prefix; keep the two in step.

On a Redis Cluster (`cluster=True`) a user's keys carry the hash tag `{u:<user>}` (`wsgate:user:{u:alice}:msgs`),
so all of them, and the idempotency markers of pushes to that user, share one slot and a script touches one slot
only; the scripts get the same names from cluster_lua.py. The `u:` keeps the tag non-empty for any user name (an
empty `{}` would make Redis hash the whole key). Single-server and client-side-sharded deployments keep the untagged
names, so their data stays where it is. Global keys keep their names and so each lands in a slot of its own, except
the publish stream's byte count, which the append script updates with the stream and so shares its slot.
"""

from __future__ import annotations

from dataclasses import dataclass

from wsnode.slots import key_slot, slot_tag


@dataclass(frozen=True, slots=True)
class Keys:
    """Names under one prefix."""

    prefix: str = ""
    cluster: bool = False

    def _user(self, user: str) -> str:
        return f"{self.prefix}wsgate:user:{{u:{user}}}" if self.cluster else f"{self.prefix}wsgate:user:{user}"

    def user_slot(self, user: str) -> int:
        """The Redis Cluster slot holding every key of `user` (cluster mode)."""
        return key_slot(self._user(user))

    def user_sessions(self, user: str) -> str:
        """Sorted set `<node>|<session>` scored by the session's start (epoch ms); read only for live nodes."""
        return f"{self._user(user)}:sessions"

    def user_base(self, user: str) -> str:
        """Stem of the per-user store keys (:seq, :msgs, :unacked, :unread)."""
        return self._user(user)

    def user_revoked(self, user: str) -> str:
        """Epoch second before which the user's tokens are refused (`disconnect?revoke=true`); expires."""
        return f"{self._user(user)}:revoked"

    def user_publish_budget(self, user: str) -> str:
        """The user's publish token buckets (frames and bytes), shared by all their sessions on every node."""
        return f"{self._user(user)}:publish_budget"

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

    def slot_channel_tag(self, slot: int) -> str:
        """On a cluster: `{<tag>}`, the hash tag of `slot` that ends this node's sharded channel of that slot."""
        return f"{{{slot_tag(slot)}}}"

    def node_slot_channel(self, node_id: str, slot: int) -> str:
        """On a cluster: a node's sharded channel (SSUBSCRIBE/SPUBLISH) for the users of `slot`, in that slot, so a
        script run for those users publishes on the master it runs on, and the message stays on that shard."""
        return f"{self.node_channel(node_id)}:{self.slot_channel_tag(slot)}"

    @property
    def broadcast_channel(self) -> str:
        """Pub/sub channel every node listens to."""
        return f"{self.prefix}wsgate:broadcast"

    def dedupe(self, key: str) -> str:
        """Marker of a push already handled under an idempotency key (its result as JSON)."""
        return f"{self.prefix}wsgate:dedupe:{key}"

    def user_dedupe(self, key: str, user: str) -> str:
        """On a cluster: the marker of the part of a push stored for the users of `user`'s slot, in that slot."""
        return f"{self.prefix}wsgate:dedupe:{{u:{user}}}:{key}"

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
        """Bytes the publish stream holds (kept by the append script in limits.py, which trims by it); on a cluster
        tagged with the stream's own name, so that both are in the stream's slot."""
        if self.cluster:
            return f"{{{self.prefix}wsgate:publish}}:bytes"
        return f"{self.prefix}wsgate:publish:bytes"
