"""OpenAPI 3.0 document of the admin API, served at ``/openapi.json``."""

from __future__ import annotations

from typing import Any

_ERR = {
    "description": "error",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}
_OK = {"description": "ok", "content": {"application/json": {"schema": {"type": "object"}}}}
_NAME = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "heliosdb-cdc admin API", "version": "0.1.0"},
    "paths": {
        "/health": {"get": {"summary": "Liveness and replication state", "responses": {"200": _OK}}},
        "/sql": {
            "post": {
                "summary": "Run the guide's SQL commands (several separated by ';')",
                "requestBody": {"required": True, "content": {"text/plain": {"schema": {"type": "string"}}}},
                "responses": {"200": _OK, "400": _ERR},
            }
        },
        "/api/streams": {
            "get": {"summary": "List streams", "responses": {"200": _OK}},
            "post": {
                "summary": "Create a stream",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Stream"}}},
                },
                "responses": {"201": _OK, "400": _ERR, "409": _ERR, "422": _ERR},
            },
        },
        "/api/streams/{name}": {
            "get": {"summary": "Get a stream", "parameters": _NAME, "responses": {"200": _OK, "404": _ERR}},
            "delete": {
                "summary": "Drop a stream",
                "parameters": _NAME,
                "responses": {"204": {"description": "dropped"}, "404": _ERR},
            },
        },
        "/api/streams/{name}/status": {
            "get": {"summary": "Stream status", "parameters": _NAME, "responses": {"200": _OK, "404": _ERR}}
        },
        "/api/streams/{name}/pause": {
            "post": {"summary": "Pause a stream", "parameters": _NAME, "responses": {"200": _OK, "404": _ERR}}
        },
        "/api/streams/{name}/resume": {
            "post": {
                "summary": "Resume a stream",
                "parameters": _NAME,
                "responses": {"200": _OK, "404": _ERR},
            }
        },
        "/api/webhooks": {
            "get": {"summary": "List webhook registrations", "responses": {"200": _OK}},
            "post": {
                "summary": "Register a webhook (the guide's WebhookRegistration)",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/WebhookRegistration"}}
                    },
                },
                "responses": {"201": _OK, "400": _ERR, "409": _ERR, "422": _ERR},
            },
        },
        "/api/webhooks/{name}": {
            "delete": {
                "summary": "Unregister a webhook",
                "parameters": _NAME,
                "responses": {"204": {"description": "removed"}, "404": _ERR},
            }
        },
        "/api/dead-letters": {
            "get": {
                "summary": "List dead letters",
                "parameters": [
                    {"name": "stream", "in": "query", "schema": {"type": "string"}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1}},
                ],
                "responses": {"200": _OK, "400": _ERR},
            },
            "delete": {
                "summary": "Purge dead letters",
                "parameters": [{"name": "stream", "in": "query", "schema": {"type": "string"}}],
                "responses": {"200": _OK},
            },
        },
        "/api/dead-letters/replay": {
            "post": {
                "summary": "Redeliver dead letters (honours the delivery log)",
                "requestBody": {
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "ids": {"type": "array", "items": {"type": "integer"}},
                                    "stream": {"type": "string"},
                                },
                            }
                        }
                    }
                },
                "responses": {"200": _OK, "400": _ERR},
            }
        },
        "/api/status": {
            "get": {"summary": "Overview of capture and every stream", "responses": {"200": _OK}}
        },
        "/metrics": {
            "get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text format"}}}
        },
    },
    "components": {
        "schemas": {
            "Error": {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]},
            "Destination": {
                "type": "object",
                "required": ["type", "address"],
                "properties": {
                    "type": {"type": "string", "enum": ["webhook", "kafka", "kinesis"]},
                    "address": {"type": "string"},
                    "topic": {"type": "string"},
                    "region": {"type": "string"},
                },
            },
            "Stream": {
                "type": "object",
                "required": ["name", "tables", "destination"],
                "properties": {
                    "name": {"type": "string"},
                    "tables": {"type": "array", "items": {"type": "string"}},
                    "destination": {"$ref": "#/components/schemas/Destination"},
                    "format": {"type": "string", "enum": ["json", "avro"]},
                    "secret": {"type": "string"},
                    "operations": {"type": "array", "items": {"type": "string"}},
                },
            },
            "WebhookRegistration": {
                "type": "object",
                "required": ["url"],
                "properties": {
                    "url": {"type": "string"},
                    "secret": {"type": "string"},
                    "tables": {"type": "array", "items": {"type": "string"}},
                    "operations": {"type": "array", "items": {"type": "string"}},
                    "name": {"type": "string"},
                },
            },
        }
    },
}
