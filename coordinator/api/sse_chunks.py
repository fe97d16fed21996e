"""Server-sent events of one streamed completion, in OpenAI's chunk shapes.

Owns the framing: `data: {json}` lines, the chat role chunk first, content deltas (chat) or
text pieces (completions), token ids when asked, the final `[DONE]`. Decides nothing about
what to send or when; the handler does.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class ChunkWriter:
    """Writes a completion's chunks on `response` (prepared by the caller), each
    `envelope` (id, object, created, model) plus its choices."""

    def __init__(self, response: web.StreamResponse, envelope: dict[str, Any], chat: bool,
                 return_token_ids: bool) -> None:
        self.response, self.envelope, self.chat, self.return_token_ids = response, envelope, chat, return_token_ids

    async def event(self, body: dict[str, Any]) -> None:
        await self.response.write(f"data: {json.dumps(body)}\n\n".encode())

    async def opening(self) -> None:
        """A chat stream opens with the assistant's role and empty content."""
        if self.chat:
            await self.event(self.envelope | {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                           "finish_reason": None}]})

    async def piece(self, text: str | None, finish: str | None = None, token: int | None = None) -> None:
        """One chunk: a piece of text (None: no content), the finish reason on the last."""
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
        if self.chat:
            choice["delta"] = {} if text is None else {"content": text}
        else:
            choice["text"] = text or ""
        if token is not None and self.return_token_ids:
            choice["token_ids"] = [token]
        await self.event(self.envelope | {"choices": [choice]})

    async def done(self) -> None:
        await self.response.write(b"data: [DONE]\n\n")
        await self.response.write_eof()
