"""The aiohttp middleware that applies the client access decision to every request.

Thin I/O: the decision is `coordinator.trust.access.client_decision` (pure); this module
only turns a refusal into its JSON answer (with `WWW-Authenticate` on 401).
"""

from __future__ import annotations

from aiohttp import web

from coordinator.trust.access import client_decision


def access_middleware(config_of):
    """Middleware checking client credentials; `config_of(app)` gives the AccessConfig in
    force (it can change: the join secret rotates)."""

    @web.middleware
    async def check(request: web.Request, handler):
        error = client_decision(config_of(request.app), request.path, request.remote,
                                request.headers.get("Authorization"), request.query.get("api_key"))
        if error is not None:
            return web.json_response(error.body(), status=error.status,
                                     headers={"WWW-Authenticate": "Bearer"} if error.status == 401 else None)
        return await handler(request)

    return check
