"""Table tests of settings from flags and environment variables."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from scripts.settings_docs import with_table
from wsnode.errors import SettingsError
from wsnode.settings import AT_LEAST_1, FLAGS, POSITIVE, NodeSettings, flag_of, markdown, settings_from

BASE = ["--port", "8080", "--jwt-secret", "s", "--node-id", "n1"]


def test_flags_override_environment() -> None:
    settings = settings_from([*BASE, "--redis-prefix", "flag:"], {"WSNODE_REDIS_PREFIX": "env:",
                                                                 "REDIS_URL": "redis://h:1/0"})
    assert settings.redis_prefix == "flag:" and settings.redis_url == "redis://h:1/0"


@pytest.mark.parametrize(("env", "field", "value"), [
    ({"WSNODE_API_KEY": "a, b,,c"}, "api_keys", ("a", "b", "c")),
    ({"WSNODE_ALLOWED_ORIGINS": "https://x"}, "allowed_origins", ("https://x",)),
    ({"WSNODE_PUBLISH_MODULES": "chat, typing"}, "publish_modules", ("chat", "typing")),
    ({"WSNODE_ALLOW_ANONYMOUS": "1"}, "allow_anonymous", True),
    ({"WSNODE_ALLOW_ANONYMOUS": "false"}, "allow_anonymous", False),
    ({"CONSUL_HTTP_ADDR": "127.0.0.1:8500"}, "consul_addr", "127.0.0.1:8500"),
    ({"CONSUL_HTTP_TOKEN": "t0k"}, "consul_token", "t0k"),
    ({"CONSUL_HTTP_ADDR": ""}, "consul_addr", None),
    ({"WSNODE_SERVICE_NAME": "push"}, "service_name", "push"),
    ({"WSNODE_ADVERTISE_HOST": "10.0.0.5"}, "advertise_host", "10.0.0.5"),
    ({"WSNODE_HOST": "::1"}, "host", "::1"),
    ({"WSNODE_SESSION_TTL_S": "3"}, "session_ttl_s", 3.0),
    ({"WSNODE_STORE_MAX_COUNT": "10"}, "store_max_count", 10),
    ({"WSNODE_PUBSUB_HEARTBEAT_S": "0.5"}, "pubsub_heartbeat_s", 0.5),
    ({"WSNODE_PUBSUB_TIMEOUT_S": "4"}, "pubsub_timeout_s", 4.0),
    ({"WSNODE_ROUTE_GRACE_S": "8"}, "route_grace_s", 8.0),
    ({"WSNODE_JWT_ALLOW_NO_EXP": "1"}, "jwt_allow_no_exp", True),
    ({"WSNODE_JWT_AUDIENCE": "wsgate"}, "jwt_audience", "wsgate"),
    ({"WSNODE_JWT_ISSUER": "https://idp"}, "jwt_issuer", "https://idp"),
    ({"WSNODE_MANAGEMENT_PORT": "9101"}, "management_port", 9101),
    ({"WSNODE_MANAGEMENT_HOST": "10.0.0.5"}, "management_host", "10.0.0.5"),
    ({"WSNODE_MANAGEMENT_KEY": "m1,m2"}, "management_keys", ("m1", "m2")),
    ({"WSNODE_MAX_SESSIONS_PER_USER": "4"}, "max_sessions_per_user", 4),
    ({"WSNODE_PUBLISH_RATE": "2.5"}, "publish_rate_per_s", 2.5),
    ({"WSNODE_PUBLISH_BYTES_RATE": "100000"}, "publish_bytes_rate_per_s", 100000),
    ({"WSNODE_PUBLISH_STREAM_MAX_BYTES": "1000000"}, "publish_stream_max_bytes", 1000000),
    ({"WSNODE_REVOKE_TTL_S": "600"}, "revoke_ttl_s", 600.0),
])
def test_every_setting_reads_its_environment_variable(env: dict[str, str], field: str, value: object) -> None:
    assert getattr(settings_from(BASE, env), field) == value


def test_port_and_node_id_from_environment_and_generated_id() -> None:
    settings = settings_from([], {"WSNODE_PORT": "9000", "WSNODE_JWT_SECRET": "s"})
    assert settings.port == 9000 and settings.node_id and settings.service_id.startswith("ws-service-")


def test_public_key_is_read_from_a_file(tmp_path: Path) -> None:
    pem = tmp_path / "key.pem"
    pem.write_text("-----BEGIN PUBLIC KEY-----\nabc\n-----END PUBLIC KEY-----\n")
    settings = settings_from(["--port", "1", "--jwt-public-key", str(pem)], {})
    assert settings.jwt_public_key is not None and "PUBLIC KEY" in settings.jwt_public_key


@pytest.mark.parametrize(("argv", "env", "message"), [
    ([], {}, "--port"),
    (["--port", "x", "--jwt-secret", "s"], {}, "number"),
    (["--port", "70000", "--jwt-secret", "s"], {}, "1-65535"),
    (["--port", "1"], {}, "no way to authenticate"),
    (["--port", "1", "--jwt-public-key", "/nonexistent/key.pem"], {}, "cannot read"),
    ([*BASE, "--node-id", "bad id"], {}, "--node-id"),
    ([*BASE, "--redis", "http://x"], {}, "--redis"),
    ([*BASE], {"WSNODE_ALLOW_ANONYMOUS": "maybe"}, "--allow-anonymous"),
    ([*BASE, "--session-ttl", "1", "--session-refresh", "2"], {}, "refresh"),
    ([*BASE, "--send-queue-max", "0"], {}, "send_queue_max"),
    ([*BASE, "--consul", "ftp://x:1"], {}, "--consul"),
    ([*BASE, "--pubsub-heartbeat", "2", "--pubsub-timeout", "2"], {}, "--pubsub-timeout"),
    ([*BASE, "--route-grace", "0"], {}, "route_grace_s"),
    # Numbers are ASCII digits: int() would take other scripts' digits and underscores, float() 'nan' and 'inf'.
    (["--port", "٨٠٨٠", "--jwt-secret", "s"], {}, "number"),
    ([*BASE, "--client-burst", "1_0"], {}, "number"),
    ([*BASE, "--publish-rate", "nan"], {}, "number"),
    ([*BASE, "--publish-rate", "inf"], {}, "number"),
    ([*BASE, "--max-sessions-per-user", "0"], {}, "max_sessions_per_user"),
    ([*BASE, "--publish-rate", "0"], {}, "publish_rate_per_s"),
    ([*BASE, "--publish-bytes-rate", "1000"], {}, "--publish-bytes-rate"),
    ([*BASE, "--publish-stream-max-bytes", "1000"], {}, "--publish-stream-max-bytes"),
    ([*BASE, "--management-port", "8080"], {}, "--management-port"),
])
def test_bad_settings_are_refused_with_a_clear_message(argv: list[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as info:
        settings_from(argv, env)
    assert message in info.value.reason


@pytest.mark.parametrize(("interval_s", "health_redis_timeout_s"), [(1.0, 0.5), (10.0, 0.5), (0.4, 0.2)])
def test_health_waits_for_redis_half_the_consul_check_timeout(interval_s: float,
                                                              health_redis_timeout_s: float) -> None:
    settings = settings_from([*BASE, "--consul-check-interval", str(interval_s)], {})
    assert settings.health_redis_timeout_s == health_redis_timeout_s


def test_every_setting_is_declared_once_with_its_flag_variable_and_help() -> None:
    """One source per setting: each NodeSettings field carries its flag, variable and help (settings.setting)."""
    assert [item.name for item in FLAGS] == [f.name for f in fields(NodeSettings)]
    assert len({item.flag for item in FLAGS}) == len(FLAGS) and len({item.env for item in FLAGS}) == len(FLAGS)
    assert all(item.flag.startswith("--") and item.env.isupper() and item.help for item in FLAGS)
    kinds = {item.name: item.kind for item in FLAGS}
    assert (kinds["port"], kinds["management_port"], kinds["api_keys"], kinds["ws_compress"]) == \
        ("int", "int", "list", "bool")
    assert (kinds["jwt_public_key"], kinds["publish_rate_per_s"], kinds["host"]) == ("path", "float", "str")


def _checked(check: str) -> list[str]:
    return [f.name for f in fields(NodeSettings) if f.metadata["check"] == check]


@pytest.mark.parametrize(("check", "bad", "reason"), [(POSITIVE, "0", "must be positive"),
                                                      (AT_LEAST_1, "0", "must be at least 1")])
def test_each_field_check_is_enforced_from_its_declaration(check: str, bad: str, reason: str) -> None:
    names = _checked(check)
    assert len(names) >= 5, "the checks should still be declared on the fields"
    for name in names:
        with pytest.raises(SettingsError) as info:
            settings_from([*BASE, flag_of(name).flag, bad], {})
        assert info.value.reason == f"{name} {reason}"


@pytest.mark.parametrize("name", [item.name for item in FLAGS if item.blank_is_unset])
def test_a_blank_variable_turns_an_optional_feature_off(name: str) -> None:
    assert getattr(settings_from(BASE, {flag_of(name).env: ""}), name) is None


def test_the_required_setting_names_its_flag_and_variable() -> None:
    assert [item.name for item in FLAGS if item.required] == ["port"]
    with pytest.raises(SettingsError) as info:
        settings_from(["--jwt-secret", "s"], {})
    assert info.value.reason == "--port (or WSNODE_PORT) is required"
    with pytest.raises(KeyError):
        flag_of("no_such_setting")


def test_docs_list_every_setting_and_are_current() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text(encoding="utf-8")
    assert with_table(doc, "node settings", markdown()) == doc, "stale: python -m scripts.settings_docs"
    assert all(f"| `{item.flag}` | `{item.env}` |" in doc for item in FLAGS)
