"""Leaf types the coordinator's subpackages share: what one part hands another.

Owns `ApiError` (the OpenAI-style refusal that the HTTP handlers answer with and the access
decisions return). Imports nothing of the project; holds no state and does no I/O.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """A request the API refuses: becomes {"error": {...}} with this HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, kind: str = "invalid_request_error", retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.retry_after = retry_after   # seconds: sent as Retry-After (busy, or no workers yet)

    def headers(self) -> dict[str, str] | None:
        return {"Retry-After": str(self.retry_after)} if self.retry_after is not None else None

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}
