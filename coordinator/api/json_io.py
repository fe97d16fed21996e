"""JSON at the HTTP API's edge: a request body read within limits, and every error
answered in the OpenAI error shape.

Owns the body limits (size, nesting) and the `json_errors` middleware. Bad input becomes an
`ApiError` (4xx with a JSON body); a bug becomes a logged 500 in the same shape. Decides
nothing about requests beyond whether their body is acceptable JSON.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aiohttp import web

from coordinator.types import ApiError

log = logging.getLogger(__name__)
MAX_BODY = 4 << 20
MAX_JSON_DEPTH = 32


def nesting(value: Any) -> int:
    """How deeply lists and objects nest in a parsed JSON value (iterative: no recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            if depth > MAX_JSON_DEPTH:
                return depth
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


async def read_json_body(request: web.Request) -> Any:
    """The request's body parsed as JSON; a 413 past MAX_BODY bytes, a 400 for anything
    that is not JSON or nests deeper than MAX_JSON_DEPTH."""
    if request.content_length and request.content_length > MAX_BODY:
        raise ApiError(413, f"request body over {MAX_BODY} bytes")
    raw = await request.read()
    if len(raw) > MAX_BODY:
        raise ApiError(413, f"request body over {MAX_BODY} bytes")
    try:
        body = json.loads(raw)
    except RecursionError as error:  # nesting deep enough to exhaust the parser's stack
        raise ApiError(400, f"the request body nests deeper than {MAX_JSON_DEPTH} levels") from error
    except (ValueError, UnicodeDecodeError) as error:  # malformed JSON, or an integer too long to parse
        raise ApiError(400, f"the request body is not valid JSON: {str(error)[:200]}") from error
    if nesting(body) > MAX_JSON_DEPTH:
        raise ApiError(400, f"the request body nests deeper than {MAX_JSON_DEPTH} levels")
    return body


@web.middleware
async def json_errors(request: web.Request, handler):
    """ApiError -> its status and OpenAI error body; aiohttp's own 4xx (404, 405) get the same shape."""
    try:
        return await handler(request)
    except ApiError as error:
        return web.json_response(error.body(), status=error.status, headers=error.headers())
    except web.HTTPException as error:
        if error.status < 400 or not request.path.startswith("/v1"):
            raise
        body = ApiError(error.status, error.reason or "error", code=str(error.status)).body()
        return web.json_response(body, status=error.status)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:  # a bug, not bad input: log it, answer in the API's shape
        log.exception("internal error on %s %s", request.method, request.path)
        body = ApiError(500, "internal error (see the coordinator's log)", kind="server_error").body()
        return web.json_response(body, status=500)
