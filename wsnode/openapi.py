"""The OpenAPI 3.1 document of the push API (data only)."""

from __future__ import annotations

from typing import Any

from wsnode.envelope import MAX_USERS_PER_PUSH

_ERROR = {"type": "object", "properties": {"status": {"type": "integer"}, "error": {"type": "string"},
                                           "field": {"type": "string"}}}
# JSON Schema patterns cannot say "printable", so user ids get a format of their own (tools that do not know it
# ignore it; the tests generate ids for it).
USER_ID_FORMAT = "wsgate-user-id"
_USER_ID = {"type": "string", "format": USER_ID_FORMAT, "minLength": 1, "maxLength": 128,
            "description": "1-128 printable characters without whitespace, control characters or '|'"}
_USER = [{"name": "user", "in": "path", "required": True, "schema": _USER_ID}]


def _answers(ok: str, schema: dict[str, Any], *extra: str) -> dict[str, Any]:
    out: dict[str, Any] = {ok: {"description": "OK", "content": {"application/json": {"schema": schema}}},
                           "401": {"description": "missing or wrong API key"},
                           "503": {"description": "Redis unreachable",
                                   "content": {"application/json": {"schema": _ERROR}}}}
    for code in extra:
        out[code] = {"description": "bad request (names the field)",
                     "content": {"application/json": {"schema": _ERROR}}}
    return out


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "wsgate node push API", "version": "1.0.0",
             "description": "Push to users' WebSocket sessions on any node. The same push body can be added as the "
                            "field `payload` of an entry of the Redis stream `<prefix>wsgate:push`."},
    "components": {
        "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Push": {
                "type": "object", "required": ["to", "module"],
                "properties": {
                    "to": {"oneOf": [
                        {"type": "object", "required": ["users"], "not": {"required": ["all"]},
                         "properties": {"users": {"type": "array", "items": _USER_ID, "minItems": 1,
                                                  "maxItems": MAX_USERS_PER_PUSH}}},
                        {"type": "object", "required": ["all"], "not": {"required": ["users"]},
                         "properties": {"all": {"const": True}}}]},
                    "module": {"type": "string", "pattern": "^[A-Za-z0-9_.:/-]{1,64}$"},
                    "event": {"type": "string", "minLength": 1, "maxLength": 64, "default": "message"},
                    "data": {},
                    "store": {"type": "boolean", "default": True,
                              "description": "keep for offline delivery and unread counts (ignored for all)"}}},
            "PushAccepted": {
                "type": "object",
                "properties": {"id": {"type": "string"}, "online_sessions": {"type": "integer"},
                               "stored": {"type": "integer"},
                               "ids": {"type": "object", "additionalProperties": {"type": "string"},
                                       "description": "message id per user (stored pushes)"}}},
        },
    },
    "security": [{"apiKey": []}],
    "paths": {
        "/api/v1/push": {"post": {
            "summary": "Push a message to users or to everyone",
            "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                            "schema": {"type": "string", "minLength": 1, "maxLength": 200},
                            "description": "a retry with the same key returns the first answer and sends nothing"}],
            "requestBody": {"required": True,
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Push"}}}},
            "responses": _answers("202", {"$ref": "#/components/schemas/PushAccepted"}, "400")}},
        "/api/v1/users/{user}/presence": {"get": {
            "summary": "Live sessions of a user", "parameters": _USER,
            "responses": _answers("200", {"type": "object"}, "400")}},
        "/api/v1/users/{user}/unread": {"get": {
            "summary": "Unread counts per module", "parameters": _USER,
            "responses": _answers("200", {"type": "object"}, "400")}},
        "/api/v1/users/{user}/disconnect": {"post": {
            "summary": "Close every session of a user (close code 1008)",
            "parameters": [*_USER, {"name": "revoke", "in": "query", "required": False,
                                    "schema": {"type": "string", "enum": ["true", "false"], "default": "false"},
                                    "description": "also refuse the user's tokens issued before now (iat), for "
                                                   "--revoke-ttl seconds; without it a client may reconnect at once"}],
            "responses": _answers("200", {"type": "object"}, "400")}},
        "/api/v1/stats": {"get": {"summary": "Session and node counts",
                                  "responses": _answers("200", {"type": "object"})}},
        "/api/v1/openapi.json": {"get": {"summary": "This document", "security": [],
                                         "responses": {"200": {"description": "OpenAPI document"}}}},
    },
}
