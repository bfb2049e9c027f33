"""Prometheus metrics of one node process (text at /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)

SESSIONS = Gauge("wsnode_sessions", "WebSocket sessions open on this node", registry=REGISTRY)
CONNECTS = Counter("wsnode_connects", "Sessions opened", registry=REGISTRY)
HANDSHAKE_REFUSED = Counter("wsnode_handshakes_refused", "Upgrades refused", ["status"], registry=REGISTRY)
MESSAGES_OUT = Counter("wsnode_messages_out", "Frames queued to clients", registry=REGISTRY)
MESSAGES_IN = Counter("wsnode_messages_in", "Frames received from clients", ["type"], registry=REGISTRY)
PUSHES = Counter("wsnode_pushes", "Pushes accepted", ["source"], registry=REGISTRY)
QUEUE_DROPS = Counter("wsnode_slow_consumer_closes", "Sessions closed 4008 for a full send queue",
                      registry=REGISTRY)
REDIS_ERRORS = Counter("wsnode_redis_errors", "Redis operations that failed", ["op"], registry=REGISTRY)
PUBSUB_RECONNECTS = Counter("wsnode_pubsub_reconnects", "Pub/sub subscriptions lost and made again",
                            registry=REGISTRY)
PUBSUB_STALLS = Counter("wsnode_pubsub_stalls", "Subscriptions replaced because no heartbeat came back in time",
                        registry=REGISTRY)
CATCH_UPS = Counter("wsnode_session_catch_ups", "Sessions resent from the store (a gap, or written again)",
                    registry=REGISTRY)
CLOSES = Counter("wsnode_closes", "Sessions closed by the node", ["code"], registry=REGISTRY)


def render() -> bytes:
    """The Prometheus text exposition of this process."""
    return generate_latest(REGISTRY)
TASK_FAILURES = Counter("wsnode_task_failures", "Long-lived tasks that failed and were restarted", ["task"],
                        registry=REGISTRY)
REFUSALS = Counter("wsnode_refusals", "Client actions refused by a per-user limit", ["reason"], registry=REGISTRY)
DEAD_LETTERS = Counter("wsnode_dead_letters", "Push stream entries moved to the dead-letter stream",
                       registry=REGISTRY)
