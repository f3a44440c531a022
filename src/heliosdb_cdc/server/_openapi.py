"""OpenAPI 3.0 document of the admin API, served at ``/openapi.json``."""

from __future__ import annotations

from typing import Any

_ERR = {
    "description": "error",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}
_OK = {"description": "ok", "content": {"application/json": {"schema": {"type": "object"}}}}
_NAME = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]

_STREAM_EXAMPLES = {
    "kafka": {
        "value": {
            "name": "orders_kafka",
            "tables": ["orders"],
            "destination": {"type": "kafka", "address": "127.0.0.1:9092", "topic": "orders"},
        }
    },
    "kinesis": {
        "value": {
            "name": "orders_kinesis",
            "tables": ["orders"],
            "destination": {"type": "kinesis", "address": "orders", "region": "us-east-1"},
            "format": "avro",
        }
    },
    "webhook": {
        "value": {
            "name": "orders_hook",
            "tables": ["orders"],
            "destination": {"type": "webhook", "address": "http://127.0.0.1:9000/hook"},
            "secret": "your-webhook-secret",
        }
    },
}
_SQL_EXAMPLES = {
    "create": {"value": "CREATE CHANGE DATA CAPTURE ON orders TO KAFKA '127.0.0.1:9092' TOPIC 'orders';"},
    "show": {"value": "SHOW CDC STREAMS; SHOW CDC STREAM STATUS orders_kafka;"},
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "heliosdb-cdc admin API", "version": "0.1.0"},
    "paths": {
        "/health": {"get": {"summary": "Liveness and replication state", "responses": {"200": _OK}}},
        "/sql": {
            "post": {
                "summary": "Run the guide's SQL commands (several separated by ';')",
                "requestBody": {
                    "required": True,
                    "content": {"text/plain": {"schema": {"type": "string"}, "examples": _SQL_EXAMPLES}},
                },
                "responses": {"200": _OK, "400": _ERR},
            }
        },
        "/api/streams": {
            "get": {"summary": "List streams", "responses": {"200": _OK}},
            "post": {
                "summary": "Create a stream",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/Stream"},
                            "examples": _STREAM_EXAMPLES,
                        }
                    },
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
        "/openapi.json": {"get": {"summary": "This document", "responses": {"200": _OK}}},
        "/": {
            "get": {
                "summary": "Live status page",
                "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}},
            }
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
                    "options": {"type": "object", "description": "per destination: docs/kafka.md, ..."},
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
                    "filters": {"type": "array", "items": {"type": "object"}},
                    "snapshot": {"type": "string", "enum": ["initial", "none"]},
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
                    "filters": {"type": "array", "items": {"type": "object"}},
                    "name": {"type": "string"},
                },
            },
        }
    },
}
