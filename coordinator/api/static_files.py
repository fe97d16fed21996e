"""Serving files to browser tabs: the worker page, onnxruntime-web, shard files.

Owns the HTTP headers tabs need: cross-origin isolation (COOP/COEP, so WASM threads
get SharedArrayBuffer), `.mjs` as JavaScript and `.wasm` as application/wasm, and no
caching of the worker's own code. Never decides anything about models or layers.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from aiohttp import web

ROOT = Path(__file__).resolve().parents[2]
WORKER_DIR = ROOT / "worker_web"
WEB_DIR = ROOT / "coordinator" / "web"
ORT_DIST = ROOT / "node_modules" / "onnxruntime-web" / "dist"
MSGPACK_DIST = ROOT / "node_modules" / "@msgpack" / "msgpack" / "dist.esm"

ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}

mimetypes.add_type("text/javascript", ".mjs")
mimetypes.add_type("text/javascript", ".js")
mimetypes.add_type("application/wasm", ".wasm")


@web.middleware
async def isolation_headers(request: web.Request, handler):
    response = await handler(request)
    response.headers.update(ISOLATION_HEADERS)
    return response


def add_static_routes(app: web.Application, shard_dir: Path | None) -> None:
    """/worker/ (page + modules), /web/ (dashboard modules), /ort/ (onnxruntime-web dist), /shards/ (model files)."""
    if not ORT_DIST.is_dir():
        raise FileNotFoundError(
            f"onnxruntime-web is not installed at {ORT_DIST}: run the README's set-up (npm install)"
        )
    app.router.add_static("/worker/", WORKER_DIR, show_index=False, append_version=False)
    app.router.add_static("/web/", WEB_DIR, show_index=False)   # the dashboard's modules and styles
    app.router.add_static("/ort/", ORT_DIST)
    app.router.add_static("/npm/msgpack/", MSGPACK_DIST)
    if shard_dir is not None:
        app.router.add_static("/shards/", shard_dir)
