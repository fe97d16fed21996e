"""Streaming text out of token ids: incremental detokenization and stop strings.

Pure: feed token ids, get the text that is safe to show now. Text that might be the
start of a stop string, or an incomplete UTF-8 character, is held back until it is
decided. Never does I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

REPLACEMENT = "\ufffd"


@dataclass
class TextStream:
    decode: Callable[[list[int]], str]
    stops: tuple[str, ...] = ()
    ids: list[int] = field(default_factory=list)
    emitted: int = 0          # characters of the final text already returned
    stopped: bool = False

    def push(self, token: int) -> str:
        """Add one token; return newly safe text ('' if none)."""
        if self.stopped:
            return ""
        self.ids.append(token)
        text = self.decode(self.ids)
        for stop in self.stops:
            index = text.find(stop, max(0, self.emitted - len(stop)))
            if index >= 0:
                self.stopped = True
                return self._take(text[:index], len(text[:index]))
        safe = len(text.rstrip(REPLACEMENT))  # an incomplete multi-byte character waits
        limit = safe
        for stop in self.stops:                # so does a possible start of a stop string
            for length in range(min(len(stop) - 1, safe), 0, -1):
                if text[safe - length:safe] == stop[:length]:
                    limit = min(limit, safe - length)
                    break
        return self._take(text, limit)

    def finish(self) -> str:
        """Everything still held back (at the end of generation)."""
        if self.stopped:
            return ""
        text = self.decode(self.ids)
        return self._take(text, len(text))

    def _take(self, text: str, upto: int) -> str:
        if upto <= self.emitted:
            return ""
        piece = text[self.emitted:upto]
        self.emitted = upto
        return piece

    def text(self) -> str:
        return self.decode(self.ids)
