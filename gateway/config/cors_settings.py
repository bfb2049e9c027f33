"""Readers for the settings the SCG filters need outside `routes:`: `spring.cloud.gateway.globalcors`, a route's
`metadata.cors`, and Resilience4j's circuit breaker and time limiter settings; pure (they read the loader's tree).

`resilience4j.circuitbreaker.configs.<c>` / `.instances.<id>` (with `baseConfig`) give failureRateThreshold,
slidingWindowSize, minimumNumberOfCalls, waitDurationInOpenState and permittedNumberOfCallsInHalfOpenState;
`resilience4j.timelimiter.configs.<c>` / `.instances.<id>` give timeoutDuration. Other Resilience4j keys are
not used by wsgate's breaker and are left alone (they are not under `spring.cloud.gateway`).
"""

from __future__ import annotations

import dataclasses

from gateway.config.nodes import Reader, YMap, YNode, YScalar, YSeq, find
from gateway.config.scgkeys import gateway_sections
from gateway.routing.cors import CorsConfig, CorsSettings
from gateway.routing.resilience import BreakerSettings

_CORS_KEYS = ("allowedOrigins", "allowedOriginPatterns", "allowedMethods", "allowedHeaders", "exposedHeaders",
              "allowCredentials", "maxAge")
# Resilience4j property (relaxed: lower case, no '-' or '_') -> BreakerSettings field.
_BREAKER_FIELDS = {
    "failureratethreshold": "failure_rate_threshold",
    "slidingwindowsize": "sliding_window_size",
    "minimumnumberofcalls": "minimum_number_of_calls",
    "waitdurationinopenstate": "wait_duration_in_open_state_s",
    "permittednumberofcallsinhalfopenstate": "permitted_number_of_calls_in_half_open_state",
}


def _strings(reader: Reader, node: YNode, key: str, *, split: bool) -> tuple[str, ...]:
    """A list, or one string (split on ',' as Spring's binder does for globalcors; kept whole in metadata)."""
    if isinstance(node, YSeq):
        return tuple(reader.text(item, f"{key}[{i}]").strip() for i, item in enumerate(node.items))
    text = reader.text(node, key)
    return tuple(p.strip() for p in text.split(",") if p.strip()) if split else (text.strip(),)


def read_cors(reader: Reader, node: YNode, key: str, *, split: bool = True) -> CorsConfig:
    """One CorsConfiguration (Spring's property names, relaxed)."""
    section = reader.mapping(node, key)
    reader.check_keys(section, key, _CORS_KEYS)
    values: dict[str, object] = {}
    for name in _CORS_KEYS[:5]:
        child = section.get(name)
        if child is not None:
            field = {"allowedOrigins": "allowed_origins", "allowedOriginPatterns": "allowed_origin_patterns",
                     "allowedMethods": "allowed_methods", "allowedHeaders": "allowed_headers",
                     "exposedHeaders": "exposed_headers"}[name]
            values[field] = _strings(reader, child, f"{key}.{name}", split=split)
    credentials = section.get("allowCredentials")
    if credentials is not None:
        values["allow_credentials"] = reader.boolean(credentials, f"{key}.allowCredentials")
    max_age = section.get("maxAge")
    if max_age is not None:
        values["max_age_s"] = round(reader.duration_s(max_age, f"{key}.maxAge", default_unit="s", positive=False))
    try:
        return CorsConfig(**values)  # type: ignore[arg-type]
    except ValueError as exc:
        raise reader.error(str(exc), section, key) from None


def read_globalcors(reader: Reader, root: YMap) -> CorsSettings | None:
    """`spring.cloud.gateway[.server.webflux|webmvc].globalcors` (cors-configurations keyed by path pattern)."""
    for scg_root, gateway_section in reversed(gateway_sections(root)):
        node = find(gateway_section, "globalcors")
        if node is None:
            continue
        key = f"{scg_root}.globalcors"
        section = reader.mapping(node, key)
        reader.check_keys(section, key, ("cors-configurations", "add-to-simple-url-handler-mapping"))
        configurations: list[tuple[str, CorsConfig]] = []
        configs = section.get("cors-configurations")
        if configs is not None:
            for pattern, child in reader.mapping(configs, f"{key}.cors-configurations").items:
                path = pattern[1:-1] if pattern.startswith("[") and pattern.endswith("]") else pattern
                configurations.append((path, read_cors(reader, child, f"{key}.cors-configurations.{pattern}")))
        simple = section.get("add-to-simple-url-handler-mapping")
        add = reader.boolean(simple, f"{key}.add-to-simple-url-handler-mapping") if simple is not None else False
        return CorsSettings(tuple(configurations), add)
    return None


def _breaker_values(reader: Reader, node: YNode | None, key: str) -> dict[str, object]:
    values: dict[str, object] = {}
    if not isinstance(node, YMap):
        return values
    for name, child in node.items:
        field = _BREAKER_FIELDS.get(name.replace("-", "").replace("_", "").lower())
        if field is None or not isinstance(child, YScalar):
            continue
        child_key = f"{key}.{name}"
        if field == "wait_duration_in_open_state_s":
            values[field] = reader.duration_s(child, child_key, default_unit="ms")
        elif field == "failure_rate_threshold":
            try:
                values[field] = float(reader.text(child, child_key))
            except ValueError:
                raise reader.error("failureRateThreshold must be a number", child, child_key) from None
        else:
            values[field] = reader.integer(child, child_key, minimum=1)
    return values


def _timeout(reader: Reader, node: YNode | None, key: str) -> dict[str, object]:
    timeout = find(node, "timeoutDuration") if isinstance(node, YMap) else None
    if timeout is None:
        return {}
    return {"timeout_s": reader.duration_s(timeout, f"{key}.timeoutDuration", default_unit="ms")}


def read_breakers(reader: Reader, root: YMap) -> tuple[tuple[str, BreakerSettings], ...]:
    """Resilience4j settings per breaker id (`default` for the default configuration)."""
    cb_root, tl_root = "resilience4j.circuitbreaker", "resilience4j.timelimiter"
    base = {**_breaker_values(reader, find(root, f"{cb_root}.configs.default"), f"{cb_root}.configs.default"),
            **_timeout(reader, find(root, f"{tl_root}.configs.default"), f"{tl_root}.configs.default")}
    result: dict[str, BreakerSettings] = {}
    names: set[str] = set()
    for section in (f"{cb_root}.instances", f"{tl_root}.instances"):
        node = find(root, section)
        if isinstance(node, YMap):
            names.update(name for name, _ in node.items)
    try:
        result["default"] = BreakerSettings(**base)  # type: ignore[arg-type]
        for name in sorted(names):
            values = dict(base)
            for root_key, reader_fn in ((cb_root, _breaker_values), (tl_root, _timeout)):
                instance = find(root, f"{root_key}.instances.{name}")
                parent = find(instance, "baseConfig") if isinstance(instance, YMap) else None
                if isinstance(parent, YScalar) and parent.value:
                    configured = find(root, f"{root_key}.configs.{parent.value}")
                    values.update(reader_fn(reader, configured, f"{root_key}.configs.{parent.value}"))
                values.update(reader_fn(reader, instance, f"{root_key}.instances.{name}"))
            result[name] = dataclasses.replace(BreakerSettings(), **values)  # type: ignore[arg-type]
    except ValueError as exc:
        raise reader.error(str(exc), find(root, "resilience4j"), "resilience4j") from None
    return tuple(result.items()) if (base or names) else ()
