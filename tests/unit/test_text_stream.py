from __future__ import annotations

from coordinator.api.text_stream import TextStream
from coordinator.engine.scheduler import Admission, Load, admit, next_from_queue

VOCAB = {1: "Hel", 2: "lo", 3: " wor", 4: "ld", 5: "\n", 6: "END", 7: "E", 8: "ND", 9: "\xe2", 10: "\x82\xac"}


def decode(ids):
    raw = "".join(VOCAB[i] for i in ids).encode("latin-1")
    return raw.decode("utf-8", errors="replace")


def run(ids, stops=()):
    stream = TextStream(decode, tuple(stops))
    pieces = [stream.push(token) for token in ids]
    return pieces, stream.finish(), stream


def test_pieces_concatenate_to_the_text():
    pieces, tail, _ = run([1, 2, 3, 4])
    assert "".join(pieces) + tail == "Hello world"


def test_stop_string_cuts_the_text_and_stops():
    pieces, tail, stream = run([1, 2, 6, 3], stops=["END"])
    assert "".join(pieces) + tail == "Hello" and stream.stopped


def test_stop_string_split_over_tokens_is_never_shown():
    pieces, tail, stream = run([1, 2, 7, 8, 3], stops=["END"])
    assert "".join(pieces) + tail == "Hello" and stream.stopped
    assert "E" not in "".join(pieces)


def test_partial_prefix_that_is_not_a_stop_is_released():
    pieces, tail, stream = run([1, 7, 2], stops=["END"])
    assert "".join(pieces) + tail == "HelElo" and not stream.stopped


def test_incomplete_utf8_is_held_back():
    pieces, _, _ = run([9, 10])
    assert pieces[0] == "" and pieces[1] == "€"


def test_admission():
    assert admit(Load(0, 0), 2, 3) is Admission.RUN
    assert admit(Load(2, 0), 2, 3) is Admission.QUEUE
    assert admit(Load(1, 1), 2, 3) is Admission.QUEUE  # first come, first served
    assert admit(Load(2, 3), 2, 3) is Admission.REFUSE
    assert next_from_queue(Load(1, 2), 2) and not next_from_queue(Load(2, 2), 2)
