"""Node settings from flags and environment variables (every flag also as a variable), validated once."""

from __future__ import annotations

import argparse
import re
import socket
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from wsnode.errors import SettingsError
from wsnode.redis_urls import RedisUrlError, split_redis_urls

NODE_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
OUTBOX_SCHEMES = ("postgresql://", "postgres://", "mysql://", "mariadb://")


def consul_check_timeout_s(check_interval_s: float) -> float:
    """The timeout of the Consul HTTP check on /health (Consul counts a slower answer as critical)."""
    return min(check_interval_s, 1.0)


@dataclass(frozen=True, slots=True)
class NodeSettings:
    """Everything a node needs to run; invalid combinations cannot be built."""

    port: int
    host: str = "0.0.0.0"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = ""
    consul_addr: str | None = None
    consul_token: str | None = None
    service_name: str = "ws-service"
    node_id: str = ""
    advertise_host: str = "127.0.0.1"
    jwt_secret: str | None = None
    jwt_public_key: str | None = None
    jwt_allow_no_exp: bool = False
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    api_keys: tuple[str, ...] = ()
    # /metrics and the detailed /health: on this port without credentials when set, else with a key on `port`
    management_port: int | None = None
    management_host: str | None = None  # default: `host`
    management_keys: tuple[str, ...] = ()  # keys that read management data only (the API keys read it too)
    allowed_origins: tuple[str, ...] = ()
    allow_anonymous: bool = False
    publish_modules: tuple[str, ...] = ()  # modules clients may `publish` to; empty: any
    tags: tuple[str, ...] = ()
    # Tunables (seconds, counts, bytes); tests shrink them to stay fast.
    session_ttl_s: float = 30.0
    session_refresh_s: float = 10.0
    heartbeat_s: float = 20.0
    send_queue_max: int = 1000
    max_frame_bytes: int = 65536
    client_rate_per_s: float = 50.0
    client_burst: int = 100
    max_sessions_per_user: int = 32
    publish_rate_per_s: float = 20.0  # client publish frames per second per user, over all the user's sessions
    publish_bytes_rate_per_s: int = 256 * 1024  # bytes of client publish frames per second per user
    publish_stream_max_bytes: int = 256 * 1024 * 1024
    revoke_ttl_s: float = 24 * 3600.0  # how long `disconnect?revoke=true` refuses a user's older tokens
    store_max_count: int = 1000
    store_max_age_s: float = 7 * 24 * 3600.0
    consul_check_interval_s: float = 1.0
    # Delivery resilience (docs/operations.md): pub/sub heartbeat period, the bound on its round trip before the
    # subscription counts as stalled, and how long the node may be unable to route before it closes its sessions.
    pubsub_heartbeat_s: float = 1.0
    pubsub_timeout_s: float = 3.0
    route_grace_s: float = 5.0
    consul_deregister_after_s: float = 60.0
    drain_delay_s: float = 1.0
    stream_claim_idle_s: float = 30.0
    # Pushes from RabbitMQ and from a transactional outbox (wsnode/amqp_consumer.py, wsnode/outbox/); off when unset.
    amqp_url: str | None = None
    amqp_queue: str = "wsgate.push"
    amqp_prefetch: int = 64
    outbox_dsn: str | None = None
    outbox_batch: int = 100
    outbox_poll_s: float = 1.0
    token_leeway_s: float = 5.0
    redis_max_connections: int = 64
    redis_min_replicas: int = 0  # a stored push is answered 202 only once this many replicas have it (WAIT)
    redis_wait_timeout_s: float = 1.0  # how long WAIT may take before the push is answered 503
    ws_compress: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise SettingsError(f"--port must be 1-65535, not {self.port}")
        if not NODE_ID_RE.match(self.node_id):
            raise SettingsError("--node-id must be 1-64 of A-Z a-z 0-9 _ . -")
        if not self.service_name or not NODE_ID_RE.match(self.service_name):
            raise SettingsError("--service-name must be 1-64 of A-Z a-z 0-9 _ . -")
        self._check_redis_urls()
        if not (self.jwt_secret or self.jwt_public_key or self.allow_anonymous):
            raise SettingsError("no way to authenticate clients: "
                                "set --jwt-secret, --jwt-public-key or --allow-anonymous")
        if self.jwt_public_key is not None and "PUBLIC KEY" not in self.jwt_public_key:
            raise SettingsError("--jwt-public-key must name a PEM public key file")
        for name in ("session_ttl_s", "session_refresh_s", "heartbeat_s", "client_rate_per_s", "publish_rate_per_s",
                     "revoke_ttl_s", "store_max_age_s", "consul_check_interval_s", "consul_deregister_after_s",
                     "stream_claim_idle_s", "pubsub_heartbeat_s", "pubsub_timeout_s", "route_grace_s",
                     "outbox_poll_s"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name} must be positive")
        if self.redis_max_connections < 4:
            raise SettingsError("redis_max_connections must be at least 4 (pub/sub and the stream hold one each)")
        if self.redis_min_replicas < 0:
            raise SettingsError(f"--redis-min-replicas must be >= 0, not {self.redis_min_replicas}")
        if self.redis_wait_timeout_s <= 0:
            raise SettingsError(f"--redis-wait-timeout must be > 0, not {self.redis_wait_timeout_s}")
        self._check_brokers()
        for name in ("send_queue_max", "max_frame_bytes", "client_burst", "store_max_count", "max_sessions_per_user"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name} must be at least 1")
        # A budget smaller than one frame would refuse the largest frames for ever.
        if self.publish_bytes_rate_per_s < self.max_frame_bytes:
            raise SettingsError("--publish-bytes-rate must be at least --max-frame-bytes")
        if self.publish_stream_max_bytes < self.max_frame_bytes:
            raise SettingsError("--publish-stream-max-bytes must be at least --max-frame-bytes")
        if self.management_port is not None and not (0 < self.management_port < 65536
                                                     and self.management_port != self.port):
            raise SettingsError("--management-port must be 1-65535 and differ from --port")
        if self.consul_addr is not None:
            from wsnode.registration import parse_consul_addr

            try:
                parse_consul_addr(self.consul_addr)
            except ValueError as exc:
                raise SettingsError(f"--consul: {exc}") from None
        if self.session_refresh_s >= self.session_ttl_s:
            raise SettingsError("session refresh interval must be shorter than the session expiry")
        if self.pubsub_timeout_s <= self.pubsub_heartbeat_s:
            raise SettingsError("--pubsub-timeout must be longer than --pubsub-heartbeat")

    def _check_brokers(self) -> None:
        if self.amqp_url is not None and not self.amqp_url.startswith(("amqp://", "amqps://")):
            raise SettingsError("--amqp-url must be an amqp:// or amqps:// URL")
        if not 0 < len(self.amqp_queue) <= 200:
            raise SettingsError("--amqp-queue must be 1-200 characters")
        if not 1 <= self.amqp_prefetch <= 10_000:
            raise SettingsError("--amqp-prefetch must be 1-10000")
        if self.outbox_dsn is not None and not self.outbox_dsn.startswith(OUTBOX_SCHEMES):
            raise SettingsError(f"--outbox-dsn must start with one of {', '.join(OUTBOX_SCHEMES)}")
        if not 1 <= self.outbox_batch <= 10_000:
            raise SettingsError("--outbox-batch must be 1-10000")

    def _check_redis_urls(self) -> None:
        try:
            split_redis_urls(self.redis_url)
        except RedisUrlError as exc:
            raise SettingsError(str(exc)) from None

    @property
    def redis_urls(self) -> tuple[str, ...]:
        """The Redis shards, in order (users are spread over them by wsnode/sharding.py; shard 0 is the primary)."""
        return split_redis_urls(self.redis_url)

    @property
    def health_redis_timeout_s(self) -> float:
        """How long /health waits for Redis: half the check's timeout, so a silent partition is answered 503."""
        return consul_check_timeout_s(self.consul_check_interval_s) / 2

    @property
    def service_id(self) -> str:
        """The Consul service id: `<service>-<node id>`."""
        return f"{self.service_name}-{self.node_id}"


# flag -> (environment variable, field, kind); help texts in _HELP
_FLAGS: dict[str, tuple[str, str, str]] = {
    "--port": ("WSNODE_PORT", "port", "int"),
    "--host": ("WSNODE_HOST", "host", "str"),
    "--redis": ("REDIS_URL", "redis_url", "str"),
    "--redis-prefix": ("WSNODE_REDIS_PREFIX", "redis_prefix", "str"),
    "--consul": ("CONSUL_HTTP_ADDR", "consul_addr", "str"),
    "--consul-token": ("CONSUL_HTTP_TOKEN", "consul_token", "str"),
    "--service-name": ("WSNODE_SERVICE_NAME", "service_name", "str"),
    "--node-id": ("WSNODE_NODE_ID", "node_id", "str"),
    "--advertise-host": ("WSNODE_ADVERTISE_HOST", "advertise_host", "str"),
    "--jwt-secret": ("WSNODE_JWT_SECRET", "jwt_secret", "str"),
    "--jwt-public-key": ("WSNODE_JWT_PUBLIC_KEY", "jwt_public_key", "path"),
    "--jwt-allow-no-exp": ("WSNODE_JWT_ALLOW_NO_EXP", "jwt_allow_no_exp", "bool"),
    "--jwt-audience": ("WSNODE_JWT_AUDIENCE", "jwt_audience", "str"),
    "--jwt-issuer": ("WSNODE_JWT_ISSUER", "jwt_issuer", "str"),
    "--api-key": ("WSNODE_API_KEY", "api_keys", "list"),
    "--management-port": ("WSNODE_MANAGEMENT_PORT", "management_port", "int"),
    "--management-host": ("WSNODE_MANAGEMENT_HOST", "management_host", "str"),
    "--management-key": ("WSNODE_MANAGEMENT_KEY", "management_keys", "list"),
    "--allowed-origins": ("WSNODE_ALLOWED_ORIGINS", "allowed_origins", "list"),
    "--allow-anonymous": ("WSNODE_ALLOW_ANONYMOUS", "allow_anonymous", "bool"),
    "--publish-modules": ("WSNODE_PUBLISH_MODULES", "publish_modules", "list"),
    "--tags": ("WSNODE_TAGS", "tags", "list"),
    "--session-ttl": ("WSNODE_SESSION_TTL_S", "session_ttl_s", "float"),
    "--session-refresh": ("WSNODE_SESSION_REFRESH_S", "session_refresh_s", "float"),
    "--heartbeat": ("WSNODE_HEARTBEAT_S", "heartbeat_s", "float"),
    "--send-queue-max": ("WSNODE_SEND_QUEUE_MAX", "send_queue_max", "int"),
    "--max-frame-bytes": ("WSNODE_MAX_FRAME_BYTES", "max_frame_bytes", "int"),
    "--client-rate": ("WSNODE_CLIENT_RATE_PER_S", "client_rate_per_s", "float"),
    "--client-burst": ("WSNODE_CLIENT_BURST", "client_burst", "int"),
    "--max-sessions-per-user": ("WSNODE_MAX_SESSIONS_PER_USER", "max_sessions_per_user", "int"),
    "--publish-rate": ("WSNODE_PUBLISH_RATE", "publish_rate_per_s", "float"),
    "--publish-bytes-rate": ("WSNODE_PUBLISH_BYTES_RATE", "publish_bytes_rate_per_s", "int"),
    "--publish-stream-max-bytes": ("WSNODE_PUBLISH_STREAM_MAX_BYTES", "publish_stream_max_bytes", "int"),
    "--revoke-ttl": ("WSNODE_REVOKE_TTL_S", "revoke_ttl_s", "float"),
    "--store-max-count": ("WSNODE_STORE_MAX_COUNT", "store_max_count", "int"),
    "--store-max-age": ("WSNODE_STORE_MAX_AGE_S", "store_max_age_s", "float"),
    "--consul-check-interval": ("WSNODE_CONSUL_CHECK_INTERVAL_S", "consul_check_interval_s", "float"),
    "--pubsub-heartbeat": ("WSNODE_PUBSUB_HEARTBEAT_S", "pubsub_heartbeat_s", "float"),
    "--pubsub-timeout": ("WSNODE_PUBSUB_TIMEOUT_S", "pubsub_timeout_s", "float"),
    "--route-grace": ("WSNODE_ROUTE_GRACE_S", "route_grace_s", "float"),
    "--consul-deregister-after": ("WSNODE_CONSUL_DEREGISTER_AFTER_S", "consul_deregister_after_s", "float"),
    "--drain-delay": ("WSNODE_DRAIN_DELAY_S", "drain_delay_s", "float"),
    "--stream-claim-idle": ("WSNODE_STREAM_CLAIM_IDLE_S", "stream_claim_idle_s", "float"),
    "--amqp-url": ("WSNODE_AMQP_URL", "amqp_url", "str"),
    "--amqp-queue": ("WSNODE_AMQP_QUEUE", "amqp_queue", "str"),
    "--amqp-prefetch": ("WSNODE_AMQP_PREFETCH", "amqp_prefetch", "int"),
    "--outbox-dsn": ("WSNODE_OUTBOX_DSN", "outbox_dsn", "str"),
    "--outbox-batch": ("WSNODE_OUTBOX_BATCH", "outbox_batch", "int"),
    "--outbox-poll": ("WSNODE_OUTBOX_POLL_S", "outbox_poll_s", "float"),
    "--token-leeway": ("WSNODE_TOKEN_LEEWAY_S", "token_leeway_s", "float"),
    "--ws-compress": ("WSNODE_WS_COMPRESS", "ws_compress", "bool"),
    "--redis-max-connections": ("WSNODE_REDIS_MAX_CONNECTIONS", "redis_max_connections", "int"),
    "--redis-min-replicas": ("WSNODE_REDIS_MIN_REPLICAS", "redis_min_replicas", "int"),
    "--redis-wait-timeout": ("WSNODE_REDIS_WAIT_TIMEOUT_S", "redis_wait_timeout_s", "float"),
}

_HELP: dict[str, str] = {
    '--port': 'listen port',
    '--host': 'listen address (default 0.0.0.0)',
    '--redis': 'Redis URL; several, comma-separated, shard users over them (order matters: keep it the same '
               'on every node); redis+sentinel://host:26379[,host:26379]/<master>[/db] follows a Sentinel-watched '
               'master',
    '--redis-prefix': 'prefix of every Redis key and channel',
    '--consul': 'Consul agent (host:port or URL); registers when set',
    '--consul-token': 'Consul ACL token',
    '--service-name': 'Consul service name (default ws-service)',
    '--node-id': 'unique node id (default: host name + random)',
    '--advertise-host': 'address registered in Consul (default 127.0.0.1)',
    '--jwt-secret': 'HS256 secret for client tokens',
    '--jwt-public-key': 'path to a PEM public key for RS256 client tokens',
    '--jwt-allow-no-exp': 'accept client tokens without exp (they never expire; off by default)',
    '--jwt-audience': 'when set, client tokens must name it in aud',
    '--jwt-issuer': 'when set, client tokens must carry it as iss',
    '--api-key': 'push API bearer keys, comma-separated',
    '--management-port': 'serve /metrics and the detailed /health on this port without credentials (keep it '
                         'private); without it they need an API or management key',
    '--management-host': 'listen address of the management port (default: --host)',
    '--management-key': 'bearer keys that read /metrics and the detailed /health only, comma-separated',
    '--allowed-origins': 'allowed browser Origins, comma-separated (empty: any)',
    '--allow-anonymous': 'development: clients without token get a generated user id',
    '--publish-modules': 'modules clients may publish to, comma-separated (empty: any)',
    '--tags': 'Consul tags, comma-separated',
    '--session-ttl': 'seconds a session stays in Redis without refresh (default 30)',
    '--session-refresh': 'seconds between refreshes (default ttl/3)',
    '--heartbeat': 'seconds between server pings; no pong within half of it drops the peer (default 20)',
    '--send-queue-max': 'frames queued per session before it is closed 4008 (default 1000)',
    '--max-frame-bytes': 'largest client frame; bigger closes 1009 (default 65536)',
    '--client-rate': 'client frames per second allowed (default 50)',
    '--client-burst': 'client frame burst (default 100)',
    '--max-sessions-per-user': 'sessions per user over all nodes; a new one closes the oldest with 1008 (default 32)',
    '--publish-rate': 'client publish frames per second per user, over all their sessions (default 20)',
    '--publish-bytes-rate': 'bytes of client publish frames per second per user (default 262144)',
    '--publish-stream-max-bytes': 'bytes the publish stream may hold; the oldest entries go (default 256 MiB)',
    '--revoke-ttl': 'seconds a revoke (disconnect?revoke=true) is kept; tokens should not live longer '
                    '(default 86400)',
    '--store-max-count': 'stored messages kept per user (default 1000)',
    '--store-max-age': 'seconds a stored message is kept (default 7 days)',
    '--consul-check-interval': 'seconds between Consul health checks (default 1)',
    '--pubsub-heartbeat': 'seconds between heartbeats a node sends itself through Redis pub/sub (default 1)',
    '--pubsub-timeout': 'seconds without a heartbeat back before the subscription counts as stalled and is '
                        'replaced (default 3)',
    '--route-grace': 'seconds a node may be unable to route before it closes its sessions with 1013 so clients '
                     'resume elsewhere (default 5)',
    '--consul-deregister-after': 'seconds critical before Consul removes the node (default 60)',
    '--drain-delay': 'seconds between leaving Consul and closing sessions on SIGTERM (default 1)',
    '--stream-claim-idle': 'seconds before a pending push stream entry of another consumer is claimed (default 30)',
    '--amqp-url': 'RabbitMQ URL (amqp://user:pass@host:5672/vhost); consume pushes from --amqp-queue when set',
    '--amqp-queue': 'durable queue of pushes, dead letters to <queue>.dead (default wsgate.push)',
    '--amqp-prefetch': 'unacknowledged RabbitMQ messages this node holds at once (default 64)',
    '--outbox-dsn': 'transactional outbox database (postgresql://... or mysql://...); push its rows when set',
    '--outbox-batch': 'outbox rows claimed per transaction (default 100)',
    '--outbox-poll': 'seconds between outbox polls when no notification wakes the node (default 1)',
    '--token-leeway': 'clock skew tolerated on exp/nbf, seconds (default 5)',
    '--ws-compress': 'offer permessage-deflate (off: memory)',
    '--redis-max-connections': 'Redis connection pool size, per shard (default 64)',
    '--redis-min-replicas': 'a stored push is answered 202 only once this many replicas confirmed it (Redis WAIT); '
                            'otherwise 503, and a retry with the same Idempotency-Key stores nothing twice '
                            '(default 0)',
    '--redis-wait-timeout': 'seconds WAIT may take for --redis-min-replicas before the push is answered 503 '
                            '(default 1)',
}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def build_parser() -> argparse.ArgumentParser:
    """The CLI parser; every flag's help names its environment variable."""
    parser = argparse.ArgumentParser(prog="wsnode", description="wsgate push node: one WebSocket endpoint, push API")
    for flag, (env, _field, kind) in _FLAGS.items():
        if kind == "bool":
            parser.add_argument(flag, action="store_const", const="1", default=None,
                                help=f"{_HELP[flag]} (env {env})")
        else:
            parser.add_argument(flag, default=None, help=f"{_HELP[flag]} (env {env})")
    return parser


def _ascii_number(raw: str) -> str:
    # int() and float() also take other scripts' digits ('٣'), underscores and 'inf'/'nan': not numbers here.
    text = raw.strip()
    if not re.fullmatch(r"[+-]?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?", text):
        raise ValueError(text)
    return text


def _convert(flag: str, kind: str, raw: str) -> object:
    try:
        if kind == "int":
            return int(_ascii_number(raw))
        if kind == "float":
            return float(_ascii_number(raw))
    except ValueError:
        raise SettingsError(f"{flag} must be a number, not {raw!r}") from None
    if kind == "bool":
        if raw.strip().lower() in _TRUE:
            return True
        if raw.strip().lower() in _FALSE:
            return False
        raise SettingsError(f"{flag} must be 1/0/true/false, not {raw!r}")
    if kind == "list":
        return tuple(item.strip() for item in raw.split(",") if item.strip())
    if kind == "path":
        try:
            return Path(raw).read_text()
        except OSError as exc:
            raise SettingsError(f"{flag}: cannot read {raw!r}: {exc.strerror}") from None
    return raw


def settings_from(argv: Sequence[str], environ: Mapping[str, str]) -> NodeSettings:
    """Settings from flags, then environment variables, then defaults; SettingsError on a bad value."""
    args = vars(build_parser().parse_args(list(argv)))
    values: dict[str, object] = {}
    for flag, (env, name, kind) in _FLAGS.items():
        raw = args[flag.lstrip("-").replace("-", "_")]
        if raw is None:
            raw = environ.get(env)
        if raw is None or (raw == "" and kind not in ("str", "bool")):
            continue
        values[name] = _convert(flag, kind, raw)
    if "port" not in values:
        raise SettingsError("--port (or WSNODE_PORT) is required")
    if not values.get("node_id"):
        values["node_id"] = f"{socket.gethostname().split('.')[0][:40]}-{uuid.uuid4().hex[:8]}"
        values["node_id"] = re.sub(r"[^A-Za-z0-9_.-]", "-", str(values["node_id"]))
    if "session_ttl_s" in values and "session_refresh_s" not in values:
        values["session_refresh_s"] = float(values["session_ttl_s"]) / 3  # type: ignore[arg-type]
    for optional in ("consul_addr", "amqp_url", "outbox_dsn"):
        if values.get(optional) == "":
            values[optional] = None
    known = {f.name for f in fields(NodeSettings)}
    assert set(values) <= known
    return NodeSettings(**values)  # type: ignore[arg-type]
