"""Node settings from flags and environment variables (every flag also as a variable), validated once.

Each setting is one NodeSettings field (`setting(...)`): its default, flag, variable, help and check. The parser, the
environment fallbacks and the table in docs/operations.md (`python -m wsnode.settings --markdown` prints it,
`python -m scripts.settings_docs` writes it there) are built from those fields.
"""

from __future__ import annotations

import argparse
import re
import socket
import sys
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from wsnode.errors import SettingsError
from wsnode.redis_urls import RedisUrlError, split_redis_urls

NODE_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
OUTBOX_SCHEMES = ("postgresql://", "postgres://", "mysql://", "mariadb://")


def consul_check_timeout_s(check_interval_s: float) -> float:
    """The timeout of the Consul HTTP check on /health (Consul counts a slower answer as critical)."""
    return min(check_interval_s, 1.0)


REQUIRED: Any = MISSING  # a setting without a default
POSITIVE = "positive"  # checks a field's value alone: > 0
AT_LEAST_1 = "at least 1"  # ... >= 1


def setting(default: Any, flag: str, env: str, help_text: str, *, kind: str | None = None, check: str | None = None,
            blank_is_unset: bool = False) -> Any:
    """A NodeSettings field with its flag, environment variable, help and check: the one place a setting is declared.

    `kind` (how the text of a flag or variable is read) follows the field's type: int, float, bool, a tuple is a
    comma-separated list, anything else text; `path` reads a file's content. `check` (POSITIVE, AT_LEAST_1) is
    enforced when the settings are built; checks across fields are NodeSettings.__post_init__'s. `blank_is_unset`: an
    empty value is None (a variable exported empty turns the feature off)."""
    return field(default=default, metadata={"flag": flag, "env": env, "help": help_text, "kind": kind,
                                            "check": check, "blank_is_unset": blank_is_unset})


@dataclass(frozen=True, slots=True)
class NodeSettings:
    """Everything a node needs to run; invalid combinations cannot be built."""

    port: int = setting(REQUIRED, "--port", "WSNODE_PORT",
        'listen port')
    host: str = setting("0.0.0.0", "--host", "WSNODE_HOST",
        'listen address (default 0.0.0.0)')
    redis_url: str = setting("redis://127.0.0.1:6379/0", "--redis", "REDIS_URL",
        'Redis URL; several, comma-separated, shard users over them (order matters: keep it the same on '
        'every node); redis+sentinel://host:26379[,host:26379]/<master>[/db] follows a Sentinel-watched '
        'master')
    redis_prefix: str = setting("", "--redis-prefix", "WSNODE_REDIS_PREFIX",
        'prefix of every Redis key and channel')
    consul_addr: str | None = setting(None, "--consul", "CONSUL_HTTP_ADDR",
        'Consul agent (host:port or URL); registers when set', blank_is_unset=True)
    consul_token: str | None = setting(None, "--consul-token", "CONSUL_HTTP_TOKEN",
        'Consul ACL token')
    service_name: str = setting("ws-service", "--service-name", "WSNODE_SERVICE_NAME",
        'Consul service name (default ws-service)')
    node_id: str = setting("", "--node-id", "WSNODE_NODE_ID",
        'unique node id (default: host name + random)')
    advertise_host: str = setting("127.0.0.1", "--advertise-host", "WSNODE_ADVERTISE_HOST",
        'address registered in Consul (default 127.0.0.1)')
    jwt_secret: str | None = setting(None, "--jwt-secret", "WSNODE_JWT_SECRET",
        'HS256 secret for client tokens')
    jwt_public_key: str | None = setting(None, "--jwt-public-key", "WSNODE_JWT_PUBLIC_KEY",
        'path to a PEM public key for RS256 client tokens', kind='path')
    jwt_allow_no_exp: bool = setting(False, "--jwt-allow-no-exp", "WSNODE_JWT_ALLOW_NO_EXP",
        'accept client tokens without exp (they never expire; off by default)')
    jwt_audience: str | None = setting(None, "--jwt-audience", "WSNODE_JWT_AUDIENCE",
        'when set, client tokens must name it in aud')
    jwt_issuer: str | None = setting(None, "--jwt-issuer", "WSNODE_JWT_ISSUER",
        'when set, client tokens must carry it as iss')
    api_keys: tuple[str, ...] = setting((), "--api-key", "WSNODE_API_KEY",
        'push API bearer keys, comma-separated')
    # /metrics and the detailed /health: on this port without credentials when set, else with a key on `port`
    management_port: int | None = setting(None, "--management-port", "WSNODE_MANAGEMENT_PORT",
        'serve /metrics and the detailed /health on this port without credentials (keep it private); '
        'without it they need an API or management key')
    # default: `host`
    management_host: str | None = setting(None, "--management-host", "WSNODE_MANAGEMENT_HOST",
        'listen address of the management port (default: --host)')
    # keys that read management data only (the API keys read it too)
    management_keys: tuple[str, ...] = setting((), "--management-key", "WSNODE_MANAGEMENT_KEY",
        'bearer keys that read /metrics and the detailed /health only, comma-separated')
    allowed_origins: tuple[str, ...] = setting((), "--allowed-origins", "WSNODE_ALLOWED_ORIGINS",
        'allowed browser Origins, comma-separated (empty: any)')
    allow_anonymous: bool = setting(False, "--allow-anonymous", "WSNODE_ALLOW_ANONYMOUS",
        'development: clients without token get a generated user id')
    # modules clients may `publish` to; empty: any
    publish_modules: tuple[str, ...] = setting((), "--publish-modules", "WSNODE_PUBLISH_MODULES",
        'modules clients may publish to, comma-separated (empty: any)')
    tags: tuple[str, ...] = setting((), "--tags", "WSNODE_TAGS",
        'Consul tags, comma-separated')
    # Tunables (seconds, counts, bytes); tests shrink them to stay fast.
    session_ttl_s: float = setting(30.0, "--session-ttl", "WSNODE_SESSION_TTL_S",
        'seconds a session stays in Redis without refresh (default 30)', check=POSITIVE)
    session_refresh_s: float = setting(10.0, "--session-refresh", "WSNODE_SESSION_REFRESH_S",
        'seconds between refreshes (default ttl/3)', check=POSITIVE)
    heartbeat_s: float = setting(20.0, "--heartbeat", "WSNODE_HEARTBEAT_S",
        'seconds between server pings; no pong within half of it drops the peer (default 20)', check=POSITIVE)
    send_queue_max: int = setting(1000, "--send-queue-max", "WSNODE_SEND_QUEUE_MAX",
        'frames queued per session before it is closed 4008 (default 1000)', check=AT_LEAST_1)
    max_frame_bytes: int = setting(65536, "--max-frame-bytes", "WSNODE_MAX_FRAME_BYTES",
        'largest client frame; bigger closes 1009 (default 65536)', check=AT_LEAST_1)
    client_rate_per_s: float = setting(50.0, "--client-rate", "WSNODE_CLIENT_RATE_PER_S",
        'client frames per second allowed (default 50)', check=POSITIVE)
    client_burst: int = setting(100, "--client-burst", "WSNODE_CLIENT_BURST",
        'client frame burst (default 100)', check=AT_LEAST_1)
    max_sessions_per_user: int = setting(32, "--max-sessions-per-user", "WSNODE_MAX_SESSIONS_PER_USER",
        'sessions per user over all nodes; a new one closes the oldest with 1008 (default 32)', check=AT_LEAST_1)
    # client publish frames per second per user, over all the user's sessions
    publish_rate_per_s: float = setting(20.0, "--publish-rate", "WSNODE_PUBLISH_RATE",
        'client publish frames per second per user, over all their sessions (default 20)', check=POSITIVE)
    # bytes of client publish frames per second per user
    publish_bytes_rate_per_s: int = setting(256 * 1024, "--publish-bytes-rate", "WSNODE_PUBLISH_BYTES_RATE",
        'bytes of client publish frames per second per user (default 262144)')
    publish_stream_max_bytes: int = setting(
        256 * 1024 * 1024, "--publish-stream-max-bytes", "WSNODE_PUBLISH_STREAM_MAX_BYTES",
        'bytes the publish stream may hold; the oldest entries go (default 256 MiB)')
    # how long `disconnect?revoke=true` refuses a user's older tokens
    revoke_ttl_s: float = setting(24 * 3600.0, "--revoke-ttl", "WSNODE_REVOKE_TTL_S",
        'seconds a revoke (disconnect?revoke=true) is kept; tokens should not live longer (default 86400)',
        check=POSITIVE)
    store_max_count: int = setting(1000, "--store-max-count", "WSNODE_STORE_MAX_COUNT",
        'stored messages kept per user (default 1000)', check=AT_LEAST_1)
    store_max_age_s: float = setting(7 * 24 * 3600.0, "--store-max-age", "WSNODE_STORE_MAX_AGE_S",
        'seconds a stored message is kept (default 7 days)', check=POSITIVE)
    consul_check_interval_s: float = setting(1.0, "--consul-check-interval", "WSNODE_CONSUL_CHECK_INTERVAL_S",
        'seconds between Consul health checks (default 1)', check=POSITIVE)
    # Delivery resilience (docs/operations.md): pub/sub heartbeat period, the bound on its round trip before the
    # subscription counts as stalled, and how long the node may be unable to route before it closes its sessions.
    pubsub_heartbeat_s: float = setting(1.0, "--pubsub-heartbeat", "WSNODE_PUBSUB_HEARTBEAT_S",
        'seconds between heartbeats a node sends itself through Redis pub/sub (default 1)', check=POSITIVE)
    pubsub_timeout_s: float = setting(3.0, "--pubsub-timeout", "WSNODE_PUBSUB_TIMEOUT_S",
        'seconds without a heartbeat back before the subscription counts as stalled and is replaced '
        '(default 3)', check=POSITIVE)
    route_grace_s: float = setting(5.0, "--route-grace", "WSNODE_ROUTE_GRACE_S",
        'seconds a node may be unable to route before it closes its sessions with 1013 so clients resume '
        'elsewhere (default 5)', check=POSITIVE)
    consul_deregister_after_s: float = setting(60.0, "--consul-deregister-after", "WSNODE_CONSUL_DEREGISTER_AFTER_S",
        'seconds critical before Consul removes the node (default 60)', check=POSITIVE)
    drain_delay_s: float = setting(1.0, "--drain-delay", "WSNODE_DRAIN_DELAY_S",
        'seconds between leaving Consul and closing sessions on SIGTERM (default 1)')
    stream_claim_idle_s: float = setting(30.0, "--stream-claim-idle", "WSNODE_STREAM_CLAIM_IDLE_S",
        'seconds before a pending push stream entry of another consumer is claimed (default 30)', check=POSITIVE)
    # Pushes from RabbitMQ and from a transactional outbox (wsnode/amqp_consumer.py, wsnode/outbox/); off when unset.
    amqp_url: str | None = setting(None, "--amqp-url", "WSNODE_AMQP_URL",
        'RabbitMQ URL (amqp://user:pass@host:5672/vhost); consume pushes from --amqp-queue when set',
        blank_is_unset=True)
    amqp_queue: str = setting("wsgate.push", "--amqp-queue", "WSNODE_AMQP_QUEUE",
        'durable queue of pushes, dead letters to <queue>.dead (default wsgate.push)')
    amqp_prefetch: int = setting(64, "--amqp-prefetch", "WSNODE_AMQP_PREFETCH",
        'unacknowledged RabbitMQ messages this node holds at once (default 64)')
    outbox_dsn: str | None = setting(None, "--outbox-dsn", "WSNODE_OUTBOX_DSN",
        'transactional outbox database (postgresql://... or mysql://...); push its rows when set', blank_is_unset=True)
    outbox_batch: int = setting(100, "--outbox-batch", "WSNODE_OUTBOX_BATCH",
        'outbox rows claimed per transaction (default 100)')
    outbox_poll_s: float = setting(1.0, "--outbox-poll", "WSNODE_OUTBOX_POLL_S",
        'seconds between outbox polls when no notification wakes the node (default 1)', check=POSITIVE)
    token_leeway_s: float = setting(5.0, "--token-leeway", "WSNODE_TOKEN_LEEWAY_S",
        'clock skew tolerated on exp/nbf, seconds (default 5)')
    redis_max_connections: int = setting(64, "--redis-max-connections", "WSNODE_REDIS_MAX_CONNECTIONS",
        'Redis connection pool size, per shard (default 64)')
    # a stored push is answered 202 only once this many replicas have it (WAIT)
    redis_min_replicas: int = setting(0, "--redis-min-replicas", "WSNODE_REDIS_MIN_REPLICAS",
        'a stored push is answered 202 only once this many replicas confirmed it (Redis WAIT); otherwise '
        '503, and a retry with the same Idempotency-Key stores nothing twice (default 0)')
    # how long WAIT may take before the push is answered 503
    redis_wait_timeout_s: float = setting(1.0, "--redis-wait-timeout", "WSNODE_REDIS_WAIT_TIMEOUT_S",
        'seconds WAIT may take for --redis-min-replicas before the push is answered 503 (default 1)')
    # A connection must send its first request head within this time (the gateway's `wsgate.head-timeout`, nginx's
    # client_header_timeout): otherwise idle or trickling connections would hold descriptors until aiohttp's
    # keep-alive timeout of an hour.
    head_timeout_s: float = setting(10.0, "--head-timeout", "WSNODE_HEAD_TIMEOUT_S",
        'seconds a new connection has to send its first request head before it is answered 408 and closed '
        '(default 10)', check=POSITIVE)
    ws_compress: bool = setting(False, "--ws-compress", "WSNODE_WS_COMPRESS",
        "offer permessage-deflate (off: memory); on, sessions run on aiohttp's WebSocket, not the lean path")


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
        for name in _CHECKED[POSITIVE]:
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name} must be positive")
        if self.redis_max_connections < 4:
            raise SettingsError("redis_max_connections must be at least 4 (pub/sub and the stream hold one each)")
        if self.redis_min_replicas < 0:
            raise SettingsError(f"--redis-min-replicas must be >= 0, not {self.redis_min_replicas}")
        if self.redis_wait_timeout_s <= 0:
            raise SettingsError(f"--redis-wait-timeout must be > 0, not {self.redis_wait_timeout_s}")
        self._check_brokers()
        for name in _CHECKED[AT_LEAST_1]:
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


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True, slots=True)
class Flag:
    """How one setting is given: its flag, environment variable, help, kind and field (see `setting`)."""

    flag: str
    env: str
    help: str
    kind: str
    name: str
    required: bool = False
    blank_is_unset: bool = False
    default: Any = None


def _kind(annotation: str) -> str:
    return next((kind for prefix, kind in (("int", "int"), ("float", "float"), ("bool", "bool"), ("tuple", "list"))
                 if annotation.startswith(prefix)), "str")


FLAGS: tuple[Flag, ...] = tuple(
    Flag(f.metadata["flag"], f.metadata["env"], f.metadata["help"], f.metadata["kind"] or _kind(str(f.type)), f.name,
         f.default is MISSING, f.metadata["blank_is_unset"], f.default)
    for f in fields(NodeSettings))
_CHECKED: dict[str, tuple[str, ...]] = {  # the fields each one-field check applies to
    check: tuple(f.name for f in fields(NodeSettings) if f.metadata["check"] == check)
    for check in (POSITIVE, AT_LEAST_1)
}


def flag_of(name: str) -> Flag:
    """The flag of the NodeSettings field `name` (KeyError for no such field)."""
    for item in FLAGS:
        if item.name == name:
            return item
    raise KeyError(name)


def build_parser() -> argparse.ArgumentParser:
    """The CLI parser; every flag's help names its environment variable."""
    parser = argparse.ArgumentParser(prog="wsnode", description="wsgate push node: one WebSocket endpoint, push API")
    for item in FLAGS:
        if item.kind == "bool":
            parser.add_argument(item.flag, action="store_const", const="1", default=None,
                                help=f"{item.help} (env {item.env})")
        else:
            parser.add_argument(item.flag, default=None, help=f"{item.help} (env {item.env})")
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
    for item in FLAGS:
        raw = args[item.flag.lstrip("-").replace("-", "_")]
        if raw is None:
            raw = environ.get(item.env)
        if raw is None or (raw == "" and item.kind not in ("str", "bool")):
            continue
        values[item.name] = None if raw == "" and item.blank_is_unset else _convert(item.flag, item.kind, raw)
    for item in FLAGS:
        if item.required and item.name not in values:
            raise SettingsError(f"{item.flag} (or {item.env}) is required")
    if not values.get("node_id"):
        values["node_id"] = f"{socket.gethostname().split('.')[0][:40]}-{uuid.uuid4().hex[:8]}"
        values["node_id"] = re.sub(r"[^A-Za-z0-9_.-]", "-", str(values["node_id"]))
    if "session_ttl_s" in values and "session_refresh_s" not in values:
        values["session_refresh_s"] = float(values["session_ttl_s"]) / 3  # type: ignore[arg-type]
    known = {f.name for f in fields(NodeSettings)}
    assert set(values) <= known
    return NodeSettings(**values)  # type: ignore[arg-type]


def _default_text(item: Flag) -> str:
    value = item.default
    if item.required:
        return "required"
    if value is None or value in ("", ()):
        return "unset"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ", ".join(f"`{v}`" for v in value)
    return f"`{value:g}`" if isinstance(value, float) else f"`{value}`"


def markdown() -> str:
    """Every setting as a Markdown table (flag, variable, default, help): the list in docs/operations.md."""
    lines = ["| flag | environment | default | meaning |", "|---|---|---|---|"]
    cell = str.maketrans({"<": "&lt;", ">": "&gt;", "|": "\\|"})
    lines += [f"| `{item.flag}` | `{item.env}` | {_default_text(item)} | {item.help.translate(cell)} |"
              for item in FLAGS]
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:] != ["--markdown"]:
        sys.exit("usage: python -m wsnode.settings --markdown (python -m scripts.settings_docs writes it)")
    print(markdown())
