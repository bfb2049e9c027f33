"""A captcha check against Redis before the login route, as a wsgate filter plugin (see docs/plugins.md)."""

from __future__ import annotations

import os
from collections.abc import Mapping

import redis.asyncio

from gateway.plugins import Exchange, Response

DEFAULT_KEY_PREFIX = "DEFAULT_CODE_KEY:"


def _text(args: Mapping[str, str | tuple[str, ...]], name: str, default: str) -> str:
    value = args.get(name, default)
    return ",".join(value) if isinstance(value, tuple) else value


class ValidateCodeFilter:
    """`ValidateCodeFilter` in YAML: refuse a login whose `code` does not match the stored captcha."""

    def __init__(self, args: Mapping[str, str | tuple[str, ...]]) -> None:
        unknown = set(args) - {"redis-url", "key-prefix", "paths"}
        if unknown:
            raise ValueError(f"unknown argument(s) {', '.join(sorted(unknown))} (redis-url, key-prefix, paths)")
        url = _text(args, "redis-url", os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
        self.key_prefix = _text(args, "key-prefix", DEFAULT_KEY_PREFIX)
        self.paths = tuple(p.strip() for p in _text(args, "paths", "").split(",") if p.strip())
        # Connects on first use, so loading a file (or `wsgate --check`) needs no Redis.
        self.redis = redis.asyncio.from_url(url)

    async def filter(self, exchange: Exchange) -> Response | None:
        """None lets the request through; a Response answers it here."""
        if self.paths and not exchange.original_path.startswith(self.paths):
            return None
        code = exchange.query_param("code")
        random_str = exchange.query_param("randomStr")
        if not code or not random_str:
            return Response(400, {"code": 1, "msg": "captcha missing"})
        key = self.key_prefix + random_str
        stored = await self.redis.getdel(key)  # one use: a captcha cannot be replayed
        text = stored.decode() if isinstance(stored, bytes) else stored
        if text is None or text.lower() != code.strip().lower():
            return Response(400, {"code": 1, "msg": "captcha invalid"})
        exchange.remove_header("X-Captcha-Verified")
        exchange.add_header("X-Captcha-Verified", "true")
        return None


def user_key_resolver(args: Mapping[str, str | tuple[str, ...]]) -> object:
    """`#{@userKeyResolver}`: rate-limit by the `X-User` header (None: no key, which SCG refuses)."""

    def resolve(exchange: Exchange) -> str | None:
        return exchange.header("X-User")

    return resolve
