"""The push and ack scripts as they run on a Redis Cluster (pure): same text, per-user names tagged `{u:<user>}`,
node messages sent with `SPUBLISH` on the node's channel of the users' slot.

On a cluster a script may touch only keys of one slot (Redis 7 refuses the rest: "non local key", "keys that do not
hash to the same slot"). The scripts' per-user keys share the user's slot once tagged as in keys.py; node liveness
keys are global (a slot of their own), so the cluster variants do not read them: they publish to every node that
holds a session of the user, and a dead node's channel simply has no subscriber. A dead node's sessions therefore
count in `online_sessions` until a live node's heartbeat removes them (within one refresh period after its liveness
key expired, see cluster_presence.py).

A plain `PUBLISH` on a cluster is forwarded over the cluster bus to every node, so each push would cost every master
of the cluster. The cluster variants `SPUBLISH` instead, on the receiving node's sharded channel of the users' slot
(`wsgate:node:<node>:{<tag>}`, keys.py), which stays on the shard of the master running the script (and its
replicas). The slot's tag comes as the last declared key (the caller declares `{<tag>}`, ClusterMessageStore): a
script cannot compute CRC16 cheaply, and declaring it lets redis-py and Redis check that it is the script's slot.
That channel is in the slot of the user's keys, so the script never publishes to a slot its master does not serve
(Redis 7.0 refuses that half way through a script, after its writes: "non local key").

The rewrite is checked: a script whose text no longer has the expected phrase fails at import, not in production.
"""

from __future__ import annotations

from wsnode import lua

_USER_STEM = "'wsgate:user:' .. user"
_TAGGED_STEM = "'wsgate:user:{u:' .. user .. '}'"
_ALIVE_CHECK = "redis.call('EXISTS', prefix .. 'wsgate:node:' .. node .. ':alive') == 1"
_PUBLISH = "redis.call('PUBLISH', prefix .. 'wsgate:node:' .. node,"
_SHARDED_PUBLISH = "redis.call('SPUBLISH', prefix .. 'wsgate:node:' .. node .. ':' .. KEYS[#KEYS],"


def cluster_variant(name: str, text: str) -> str:
    """`text` (the script `name`) with tagged user names, without liveness reads, publishing sharded."""
    if _USER_STEM not in text or _ALIVE_CHECK not in text or _PUBLISH not in text:
        raise ValueError(f"wsnode/lua/{name}.lua no longer builds user names, reads liveness or publishes as "
                         f"cluster_lua.py expects: update the rewrite")
    return text.replace(_USER_STEM, _TAGGED_STEM).replace(_ALIVE_CHECK, "true").replace(_PUBLISH, _SHARDED_PUBLISH)


PUSH_LUA = cluster_variant("push", lua.source("push"))
ACK_LUA = cluster_variant("ack", lua.source("ack"))
