"""Zero run-length coding of int8 codes (bytes). Pure; no I/O.

Coded form: a sequence of runs, each starting with one header byte h:
  h < 0x80: a literal run; h + 1 bytes follow (1..128)
  h >= 0x80: a zero run of h - 0x7F zeros (1..128); nothing follows
Zero runs shorter than MIN_ZERO_RUN stay inside literal runs (a header would cost
more than it saves). The rule is deterministic, so every encoder makes the same bytes.
"""

from __future__ import annotations

from protocol.errors import FrameError

MAX_RUN = 128
MIN_ZERO_RUN = 3


def encode(data: bytes) -> bytes:
    out = bytearray()
    literal = bytearray()

    def flush_literal() -> None:
        for start in range(0, len(literal), MAX_RUN):
            piece = literal[start:start + MAX_RUN]
            out.append(len(piece) - 1)
            out.extend(piece)
        literal.clear()

    index, length = 0, len(data)
    while index < length:
        if data[index] == 0:
            end = index
            while end < length and data[end] == 0:
                end += 1
            run = end - index
            if run >= MIN_ZERO_RUN:
                flush_literal()
                while run > 0:
                    piece = min(run, MAX_RUN)
                    out.append(0x7F + piece)
                    run -= piece
            else:
                literal.extend(data[index:end])
            index = end
        else:
            end = data.find(0, index)
            end = length if end < 0 else end
            literal.extend(data[index:end])
            index = end
    flush_literal()
    return bytes(out)


def decode(coded: bytes | memoryview, expected_length: int) -> bytes:
    """Inverse of encode; the output must be exactly expected_length bytes."""
    out = bytearray()
    index, length = 0, len(coded)
    while index < length:
        header = coded[index]
        index += 1
        if header < 0x80:
            count = header + 1
            if index + count > length:
                raise FrameError("bad-run-length", "literal run runs past the end of the payload")
            out.extend(coded[index:index + count])
            index += count
        else:
            out.extend(bytes(header - 0x7F))
        if len(out) > expected_length:
            raise FrameError("bad-run-length", f"runs decode to more than the {expected_length} bytes expected")
    if len(out) != expected_length:
        raise FrameError("bad-run-length", f"runs decode to {len(out)} bytes, expected {expected_length}")
    return bytes(out)
