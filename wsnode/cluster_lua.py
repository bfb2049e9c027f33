"""The push and ack scripts as they run on a Redis Cluster (pure): same text, per-user names tagged `{u:<user>}`.

On a cluster a script may touch only keys of one slot (Redis 7 refuses the rest: "non local key", "keys that do not
hash to the same slot"). The scripts' per-user keys share the user's slot once tagged as in keys.py; node liveness
keys are global (a slot of their own), so the cluster variants do not read them: they publish to every node that
holds a session of the user, and a dead node's channel simply has no subscriber. A dead node's sessions therefore
count in `online_sessions` until a live node's heartbeat removes them (within one refresh period after its liveness
key expired, see cluster_presence.py).

The rewrite is checked: a script whose text no longer has the expected phrase fails at import, not in production.
"""

from __future__ import annotations

from wsnode import lua

_USER_STEM = "'wsgate:user:' .. user"
_TAGGED_STEM = "'wsgate:user:{u:' .. user .. '}'"
_ALIVE_CHECK = "redis.call('EXISTS', prefix .. 'wsgate:node:' .. node .. ':alive') == 1"


def cluster_variant(name: str, text: str) -> str:
    """`text` (the script `name`) with tagged user names and without liveness reads."""
    if _USER_STEM not in text or _ALIVE_CHECK not in text:
        raise ValueError(f"wsnode/lua/{name}.lua no longer builds user names or reads liveness as cluster_lua.py "
                         f"expects: update the rewrite")
    return text.replace(_USER_STEM, _TAGGED_STEM).replace(_ALIVE_CHECK, "true")


PUSH_LUA = cluster_variant("push", lua.source("push"))
ACK_LUA = cluster_variant("ack", lua.source("ack"))
