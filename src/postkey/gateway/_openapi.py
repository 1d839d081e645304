"""The gateway's OpenAPI 3.1 document, served at ``/openapi.json`` (written out by hand so that
it says exactly what the routes accept and answer; a schemathesis test holds them to it)."""

from __future__ import annotations

import copy
from typing import Any

_ERROR = {"$ref": "#/components/schemas/Error"}
_REQUEST_REF = {"$ref": "#/components/schemas/Request"}
_KEY = {
    "name": "key",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.:~{}-]{1,200}$"},
}
_PAIRS = {
    "type": "array",
    "items": {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 2},
}
_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_REQUEST = {
    "type": "object",
    "required": ["url"],
    "additionalProperties": False,
    "properties": {
        "method": {
            "type": "string",
            "default": "GET",
            "description": "any case; not CONNECT/TRACE",
        },
        "url": {"type": "string", "description": "http or https, ASCII, at most 8192 characters"},
        "headers": {
            "description": "an object, [name, value] pairs, or a CRLF-joined string",
            "anyOf": [_STR_MAP, _PAIRS, {"type": "string"}],
        },
        "body": {"type": "string", "description": "sent as UTF-8"},
        "body_base64": {"type": "string", "description": "sent as the decoded bytes"},
        "json": {"description": "any JSON value, sent compact with Content-Type: application/json"},
        "data": {"description": "form fields", "anyOf": [_STR_MAP, _PAIRS]},
        "params": {"description": "query fields", "anyOf": [_STR_MAP, _PAIRS]},
        "timeout_ms": {"type": "integer", "minimum": 1, "maximum": 3600000},
        "key": {"type": "string", "pattern": "^[A-Za-z0-9_.:~{}-]{1,200}$"},
        "key_format": {"type": "string", "enum": ["hex", "mychat"]},
        "follow_redirects": {"type": "boolean"},
        "ttl_ms": {"type": "integer", "minimum": 1},
        "delivery": {"type": "string", "enum": ["at_least_once", "at_most_once"]},
        "http_version": {"type": "string", "enum": ["1.1", "2"]},
    },
}
_RESULT = {
    "type": "object",
    "required": ["key", "state"],
    "properties": {
        "key": {"type": "string"},
        "state": {"type": "string", "enum": ["done", "failed"]},
        "status": {"type": "integer"},
        "reason": {"type": "string"},
        "http_version": {"type": "string"},
        "headers": _PAIRS,
        "body": {"type": "string"},
        "body_b64": {"type": "string"},
        "error_kind": {"type": ["string", "null"]},
        "error": {"type": ["string", "null"]},
        "timings": {"type": "object", "additionalProperties": {"type": ["number", "null"]}},
        "url": {"type": "string"},
        "submitted_at": {"type": ["number", "null"]},
        "finished_at": {"type": ["number", "null"]},
        "elapsed_ms": {"type": ["number", "null"]},
        "attempts": {"type": "integer"},
    },
}


def _json(schema: Any, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _text(description: str, media: str = "text/plain") -> dict[str, Any]:
    return {"description": description, "content": {media: {"schema": {"type": "string"}}}}


def _errors(*codes: int) -> dict[str, Any]:
    what = {
        400: "malformed body",
        401: "no valid API key",
        403: "not allowed for this API key",
        404: "unknown key (or another tenant's)",
        408: "the body arrived too slowly",
        409: "conflict",
        410: "expired",
        413: "body over the limit",
        415: "wrong Content-Type",
        422: "invalid field",
        429: "rate limited (Retry-After)",
        503: "unavailable (Retry-After)",
    }
    return {str(c): _json(_ERROR, what[c]) for c in codes}


_AUTHED = (401, 429)
_BODY = (400, 408, 413, 415, 422)


def _op(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"summary": summary, "responses": responses, **extra}


def _request_paths(max_wait_s: float, max_batch: int) -> dict[str, Any]:
    key = [_KEY]
    pending = _json(
        {"type": "object", "properties": {"key": {"type": "string"}, "state": {"type": "string"}}},
        "pending or running",
    )
    return {
        "/v1/requests": {
            "post": _op(
                "Submit a request; its key at once",
                {
                    "202": _json(
                        {"type": "object", "properties": {"key": {"type": "string"}}}, "accepted"
                    ),
                    **_errors(*_AUTHED, *_BODY, 409, 503),
                },
                requestBody={
                    "required": True,
                    "content": {"application/json": {"schema": _REQUEST_REF}},
                },
            )
        },
        "/v1/requests/batch": {
            "post": _op(
                "Submit many requests (all validated first)",
                {
                    "202": _json(
                        {
                            "type": "object",
                            "properties": {"keys": {"type": "array", "items": {"type": "string"}}},
                        },
                        "accepted",
                    ),
                    **_errors(*_AUTHED, *_BODY, 409, 503),
                },
                requestBody={
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["requests"],
                                "additionalProperties": False,
                                "properties": {
                                    "requests": {
                                        "type": "array",
                                        "items": _REQUEST_REF,
                                        "minItems": 1,
                                        "maxItems": max_batch,
                                    }
                                },
                            }
                        }
                    },
                },
            )
        },
        "/v1/requests/{key}": {
            "get": _op(
                "A result; ?wait=SECONDS long-polls",
                {
                    "200": _json(_RESULT, "the result (done or failed)"),
                    "202": pending,
                    **_errors(*_AUTHED, 404, 410, 422, 503),
                },
                parameters=[
                    *key,
                    {
                        "name": "wait",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "number", "minimum": 0, "maximum": max_wait_s},
                    },
                ],
            ),
            "delete": _op(
                "Cancel a pending or running request",
                {"200": _json(_RESULT, "cancelled"), **_errors(*_AUTHED, 404, 409, 410, 422)},
                parameters=key,
            ),
        },
    }


def _cache_paths() -> dict[str, Any]:
    key = [_KEY]
    return {
        "/v1/cache/{key}": {
            "get": _op(
                "A cached value",
                {
                    "200": {
                        "description": "the value",
                        "content": {
                            "application/octet-stream": {
                                "schema": {"type": "string", "format": "binary"}
                            },
                            "text/plain": {"schema": {"type": "string"}},
                        },
                    },
                    **_errors(*_AUTHED, 404, 410, 422),
                },
                parameters=key,
            ),
            "put": _op(
                "Store a value (the body's bytes)",
                {"204": {"description": "stored"}, **_errors(*_AUTHED, 400, 408, 409, 413, 422)},
                parameters=[
                    *key,
                    {
                        "name": "ttl_ms",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1},
                    },
                ],
                requestBody={
                    "required": False,
                    "content": {
                        "application/octet-stream": {
                            "schema": {"type": "string", "format": "binary"}
                        }
                    },
                },
            ),
            "delete": _op(
                "Delete a value",
                {"204": {"description": "deleted"}, **_errors(*_AUTHED, 404, 422)},
                parameters=key,
            ),
        },
    }


def _mychat_paths() -> dict[str, Any]:
    key = [_KEY]
    return {
        "/v1/mychat/send": {
            "post": _op(
                "Submit (MyChat's shape): the key as text",
                {"200": _text("the key"), **_errors(*_AUTHED, *_BODY, 409, 503)},
                requestBody={
                    "required": True,
                    "content": {"application/json": {"schema": _REQUEST_REF}},
                },
            )
        },
        "/v1/mychat/get/{key}": {
            "get": _op(
                "MemCacheGet's text ('' while there is none)",
                {"200": _text("the text"), **_errors(*_AUTHED, 422)},
                parameters=key,
            )
        },
        "/v1/mychat/exists/{key}": {
            "get": _op(
                "MemCacheExists: true or false",
                {"200": _text("true or false"), **_errors(*_AUTHED, 422)},
                parameters=key,
            )
        },
    }


def _ops_paths() -> dict[str, Any]:
    public: list[dict[str, Any]] = []  # no security requirement
    return {
        "/v1/dashboard/stats": {
            "get": _op(
                "The tenant's activity (see docs/GATEWAY.md)",
                {"200": _json({"type": "object"}, "the figures"), **_errors(401)},
            )
        },
        "/metrics": {
            "get": _op(
                "Prometheus metrics (admin keys)",
                {"200": _text("metrics"), **_errors(401, 403)},
            )
        },
        "/healthz": {
            "get": _op("Liveness", {"200": _json({"type": "object"}, "alive")}, security=public)
        },
        "/readyz": {
            "get": _op(
                "Readiness (the store answers)",
                {"200": _json({"type": "object"}, "ready"), **_errors(503)},
                security=public,
            )
        },
    }


def openapi_document(
    max_wait_s: float = 60.0, max_batch: int = 1000, max_timeout_ms: int = 3_600_000
) -> dict[str, Any]:
    """The OpenAPI document, with the gateway's own limits in it."""
    request = copy.deepcopy(_REQUEST)
    request["properties"]["timeout_ms"]["maximum"] = max_timeout_ms  # type: ignore[index]
    paths = {
        **_request_paths(max_wait_s, max_batch),
        **_cache_paths(),
        **_mychat_paths(),
        **_ops_paths(),
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "postkey gateway",
            "version": "1",
            "description": "Send an HTTP request now, get its response later by key.",
        },
        "paths": paths,
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Request": request,
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {
                                "code": {"type": "string"},
                                "message": {"type": "string"},
                            },
                        }
                    },
                },
            },
        },
    }
