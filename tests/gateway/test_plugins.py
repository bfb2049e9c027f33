"""Plugins through entry points: the example package under examples/captcha-filter, installed with pip."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio

from gateway.config.loader import load_config_text
from gateway.errors import ConfigError
from gateway.model import RequestView
from gateway.plugins import PluginFilter
from gateway.ratelimit.bucket import resolve_key
from harness import ROOT, ProcessGroup, RedisInfo
from tests.gateway.procs import start_gateway_proc, start_upstream_proc

EXAMPLE = ROOT / "examples" / "captcha-filter"


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The example plugin pip-installed into a directory of its own, put on sys.path (entry points and all)."""
    target = tmp_path_factory.mktemp("plugins")
    source = tmp_path_factory.mktemp("plugin-src") / "captcha-filter"
    shutil.copytree(EXAMPLE, source)  # the build leaves build/ and *.egg-info next to the sources: not in ours
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                    str(source)], check=True, timeout=300)
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    yield target
    sys.path.remove(str(target))
    importlib.invalidate_caches()


LOGIN = """
wsgate:
  redis: {{url: "{redis}"}}
spring:
  cloud:
    gateway:
      routes:
        - id: auth
          uri: http://127.0.0.1:{port}
          predicates: [Path=/auth/**]
          filters:
            - name: ValidateCodeFilter
              args:
                redis-url: "{redis}"
                key-prefix: "{prefix}DEFAULT_CODE_KEY:"
                paths: /auth/oauth2/token
            - StripPrefix=1
"""


def test_plugin_filter_is_found_through_its_entry_point(plugin_dir: Path) -> None:
    config = load_config_text(LOGIN.format(redis="redis://127.0.0.1:6379/0", prefix="p:", port=1))
    plugin = config.routes[0].filters[0]
    assert isinstance(plugin, PluginFilter)
    assert plugin.name == "ValidateCodeFilter"
    assert plugin.describe().startswith("[ValidateCodeFilter ")


def test_plugin_refusing_its_arguments_names_the_line(plugin_dir: Path) -> None:
    text = "routes:\n  - id: a\n    uri: http://h:1\n    filters:\n      - name: ValidateCodeFilter\n" \
           "        args: {colour: red}\n"
    with pytest.raises(ConfigError) as caught:
        load_config_text(text)
    assert caught.value.line == 5
    assert "unknown argument(s) colour" in str(caught.value)


def test_plugin_key_resolver_keys_the_rate_limiter(plugin_dir: Path) -> None:
    text = """
routes:
  - id: a
    uri: http://h:1
    filters:
      - name: RequestRateLimiter
        args:
          redis-rate-limiter.replenishRate: 1
          redis-rate-limiter.burstCapacity: 1
          key-resolver: "#{@userKeyResolver}"
"""
    config = load_config_text(text)
    state_limit = config.routes[0].filters[0]
    from gateway.routing.filters.base import PlanState

    state = PlanState(RequestView("GET", "/"), "/", "", [], {})
    state_limit.apply(state)
    (limit,) = state.rate_limits
    assert limit.key == "plugin:userKeyResolver"
    assert resolve_key(limit, RequestView("GET", "/", headers=(("X-User", "alice"),))) == "alice"
    assert resolve_key(limit, RequestView("GET", "/")) == ""


@pytest.mark.parametrize(("mode", "loads"), [("fail", False), ("warn", True)])
def test_a_filter_no_plugin_provides_fails_or_warns_naming_it(mode: str, loads: bool) -> None:
    text = f"wsgate: {{unknown-filters: {mode}}}\nroutes:\n  - id: a\n    uri: http://h:1\n" \
           "    filters: [NoSuchTeamFilter, StripPrefix=1]\n"
    if not loads:
        with pytest.raises(ConfigError) as caught:
            load_config_text(text, file="r.yaml")
        assert "r.yaml:5: routes[0].filters[0]: unknown filter 'NoSuchTeamFilter'" in str(caught.value)
        return
    config = load_config_text(text, file="r.yaml")
    assert [f.name for f in config.routes[0].filters] == ["StripPrefix"]
    (warning,) = config.warnings
    assert warning.startswith("r.yaml:5: routes[0].filters[0]: unknown filter 'NoSuchTeamFilter'")


async def test_captcha_plugin_refuses_a_login_without_a_valid_captcha_and_passes_one_with_it(
        plugin_dir: Path, procs: ProcessGroup, redis_server: RedisInfo, redis_prefix: str, tmp_path: Path) -> None:
    upstream = start_upstream_proc(procs, "auth")
    routes = tmp_path / "routes.yaml"
    routes.write_text(LOGIN.format(redis=redis_server.url, prefix=redis_prefix, port=upstream))
    env = {"PYTHONPATH": f"{plugin_dir}:{ROOT}"}
    _, port = start_gateway_proc(procs, routes, env=env)
    base = f"http://127.0.0.1:{port}/auth/oauth2/token"
    store = redis.asyncio.Redis(host=redis_server.host, port=redis_server.port)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(base) as response:
                assert response.status == 400
                assert await response.json() == {"code": 1, "msg": "captcha missing"}
            async with session.post(f"{base}?randomStr=r1&code=abcd") as response:
                assert response.status == 400
                assert (await response.json())["msg"] == "captcha invalid"
            await store.set(f"{redis_prefix}DEFAULT_CODE_KEY:r1", "aBcD")
            async with session.post(f"{base}?randomStr=r1&code=abcd&grant_type=password") as response:
                assert response.status == 200
                seen = await response.json()
                assert seen["path"] == "/oauth2/token"
                assert ["X-Captcha-Verified", "true"] in seen["headers"]
            async with session.post(f"{base}?randomStr=r1&code=abcd") as response:
                assert response.status == 400  # one use: the captcha was consumed
            async with session.get(f"http://127.0.0.1:{port}/auth/other") as response:
                assert response.status == 200  # outside `paths`, the route is not checked
    finally:
        await store.aclose()


TEAM_MODULE = '''
class Tenant:
    """`Tenant=acme` or {name: Tenant, args: {tenant: acme}}: the X-Tenant header names the tenant."""

    shortcut_fields = ("tenant",)

    def __init__(self, args):
        self.tenant = args["tenant"]

    def __call__(self, exchange):
        return exchange.header("X-Tenant") == self.tenant


class Deny:
    shortcut_fields = ("status", "message")

    def __init__(self, args):
        self.status = int(args.get("status", "403"))
        self.message = args.get("message", "denied")

    async def filter(self, exchange):
        from gateway.plugins import Response

        if exchange.header("X-Let-Me-In") == "yes":
            exchange.set_header("X-Checked", "1")
            return None
        return Response(self.status, self.message)
'''


@pytest.fixture
def team_plugins(tmp_path: Path) -> Iterator[Path]:
    """A distribution installed by hand (what pip leaves behind: a module and a .dist-info with entry points)."""
    (tmp_path / "team_plugins.py").write_text(TEAM_MODULE)
    info = tmp_path / "team_plugins-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: team-plugins\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[wsgate.predicates]\nTenant = team_plugins:Tenant\n\n[wsgate.filters]\nDeny = team_plugins:Deny\n")
    sys.path.insert(0, str(tmp_path))
    importlib.invalidate_caches()
    yield tmp_path
    sys.path.remove(str(tmp_path))
    sys.modules.pop("team_plugins", None)
    importlib.invalidate_caches()


async def test_plugin_predicate_and_filter_with_shortcut_arguments(team_plugins: Path) -> None:
    from gateway.plugins import run_plugin_filters
    from gateway.routing.table import RouteTable

    config = load_config_text("routes:\n  - id: acme\n    uri: http://h:1\n    predicates: [Path=/a/**, Tenant=acme]\n"
                              "    filters: [StripPrefix=1, 'Deny=401, go away']\n")
    table = RouteTable(config)
    assert table.match(RequestView("GET", "/a/x", headers=(("X-Tenant", "other"),))) is None
    request = RequestView("GET", "/a/x", headers=(("X-Tenant", "acme"),))
    match = table.match(request)
    assert match is not None and match.has_plugins
    plan, answer = await run_plugin_filters(match.chain or (), request, match.plan(request), "acme")
    assert answer is not None and (answer.status, answer.encoded()) == (401, (b"go away", "text/plain; charset=utf-8"))
    request = RequestView("GET", "/a/x", headers=(("X-Tenant", "acme"), ("X-Let-Me-In", "yes")))
    plan, answer = await run_plugin_filters(match.chain or (), request, match.plan(request), "acme")
    assert answer is None
    assert plan.path == "/x"  # the plugin saw and kept what StripPrefix did
    assert ("X-Checked", "1") in plan.headers
