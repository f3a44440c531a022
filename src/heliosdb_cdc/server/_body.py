"""Reading request bodies: every malformed body gets a 4xx that says what is wrong."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from .._input import json_depth
from .._names import safe_repr

#: deepest JSON nesting a request body may have (a stream's options: _input.MAX_OPTION_DEPTH)
MAX_BODY_DEPTH = 64


def _error(message: str, status: int) -> web.Response:
    return web.Response(
        body=orjson.dumps({"error": message}), status=status, content_type="application/json"
    )


async def read_text(request: web.Request) -> str | web.Response:
    """The body as text in its declared charset (UTF-8 if none), or a 4xx saying why not."""
    raw = await request.read()
    charset = request.charset or "utf-8"
    try:
        return raw.decode(charset)
    except LookupError:  # no such codec, or not a text encoding (rot13, zlib...)
        return _error(f"unknown charset {safe_repr(charset)} in Content-Type; send UTF-8 text", 415)
    except UnicodeDecodeError as exc:
        return _error(
            f"the body is not valid {safe_repr(charset)} text: {exc.reason} at byte {exc.start}", 400
        )
    except (UnicodeError, ValueError) as exc:
        return _error(f"the body is not valid {safe_repr(charset)} text: {exc}", 400)


async def read_json(request: web.Request) -> Any:
    """The body parsed as JSON (always UTF-8, RFC 8259), or a 400 saying what is wrong."""
    raw = await request.read()
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return _error(f"request body must be a JSON object: {exc}", 400)
    if json_depth(data, MAX_BODY_DEPTH) > MAX_BODY_DEPTH:
        return _error(f"request body is nested more than {MAX_BODY_DEPTH} levels deep", 400)
    return data
