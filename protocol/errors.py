"""The one error type decoders raise for bad frames. Pure; no I/O."""


class FrameError(ValueError):
    """A frame that cannot be decoded. `reason` is a short stable code for logs and close reasons."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
