"""Who may use the coordinator: API keys for clients, a join secret for workers.

Owns the configuration (`AccessConfig`) and the decisions (pure: `client_decision`,
`worker_decision`, `api_keys_from`); the aiohttp middleware that applies the client
decision is `coordinator/api/access_middleware.py`. Without an API key configured the
API answers loopback clients only, so `make run` on one machine needs no configuration
while other devices can still join as workers (with the join token). `/health`, the
worker page, onnxruntime-web and the shards stay open: a tab needs them before it can
present anything, and none of them reveals a prompt.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from coordinator.types import ApiError

# Paths that need a client credential; everything else (chat page shell, worker page,
# static files, /health) is open. The chat page asks for a key when its API calls get 401.
PROTECTED_PREFIXES = ("/v1/", "/metrics", "/dashboard")


@dataclass(frozen=True)
class AccessConfig:
    api_keys: tuple[str, ...] = ()
    join_secret: str = ""            # empty: workers need no token (tests, trusted networks)

    @property
    def open_to_loopback_only(self) -> bool:
        return not self.api_keys


def api_keys_from(values: list[str], environment: str | None, files: list[Path]) -> tuple[str, ...]:
    """Keys from --api-key (repeatable), TABSWARM_API_KEYS (comma-separated) and key files
    (one per line, # comments); blanks dropped, order kept, duplicates removed."""
    keys: list[str] = list(values)
    if environment:
        keys += environment.split(",")
    for path in files:
        keys += [line.split("#", 1)[0] for line in path.read_text().splitlines()]
    return tuple(dict.fromkeys(key.strip() for key in keys if key.strip()))


def is_loopback(remote: str | None) -> bool:
    try:
        return remote is not None and ipaddress.ip_address(remote.split("%", 1)[0]).is_loopback
    except ValueError:   # a unix socket or an unparsable peer: not loopback
        return False


def bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _matches(candidate: str, keys: tuple[str, ...]) -> bool:
    # compare against every key, in constant time per key, so timing says nothing of which
    return any([hmac.compare_digest(candidate.encode(), key.encode()) for key in keys])


def client_decision(config: AccessConfig, path: str, remote: str | None, authorization: str | None,
                    query_key: str | None = None) -> ApiError | None:
    """None if the request may go on, else the OpenAI-style error to answer with."""
    if not path.startswith(PROTECTED_PREFIXES):
        return None
    if config.open_to_loopback_only:
        if is_loopback(remote):
            return None
        return ApiError(403, "this coordinator has no API key configured and answers clients on this machine "
                             "only; start it with --api-key (or TABSWARM_API_KEYS) to serve other devices",
                        code="loopback_only", kind="permission_error")
    presented = bearer(authorization) or query_key
    if presented is None:
        return ApiError(401, "missing API key: send 'Authorization: Bearer YOUR_KEY'", code="invalid_api_key",
                        kind="invalid_request_error")
    if not _matches(presented, config.api_keys):
        return ApiError(401, "incorrect API key provided", code="invalid_api_key", kind="invalid_request_error")
    return None


def worker_decision(config: AccessConfig, token: str | None) -> str | None:
    """None if a worker may open /ws/worker with this token, else why not."""
    if not config.join_secret:
        return None
    if not token:
        return "a join token is required: open the join URL the coordinator printed (…/worker/?token=…)"
    if not hmac.compare_digest(token.encode(), config.join_secret.encode()):
        return "the join token is not valid (the coordinator's join secret changed?)"
    return None


def new_secret() -> str:
    return os.urandom(16).hex()
