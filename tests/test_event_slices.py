"""The reader's slicing of a network read: no slice decodes to more events than the
bound allows, whatever the events' size, line ends or cuts."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from llamacpp_adapter import CompletionStreamDecoder, StreamEvent
from llamacpp_adapter._stream import EXTRA_EVENTS_PER_SLICE, event_slices

from .wire import final_event, token_event

SMALLEST = b'data:{"content":"","stop":false}\n\n'


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    parts = []
    for n in range(1, draw(st.integers(1, 120)) + 1):
        kind = draw(st.sampled_from(["smallest", "real", "comment", "blank"]))
        if kind == "smallest":
            parts.append(SMALLEST)
        elif kind == "real":
            parts.append(token_event(n))
        elif kind == "comment":
            parts.append(b": keep-alive\n")
        else:
            parts.append(b"\n")
    parts.append(final_event(0).replace(b'"tokens_predicted":0', b'"tokens_predicted":9999'))
    stream = b"".join(parts)
    line_end = draw(st.sampled_from([b"\n", b"\r\n", b"\r"]))
    return stream.replace(b"\n", line_end) if line_end != b"\n" else stream


@given(streams(), st.integers(1, 30), st.data())
def test_no_slice_decodes_to_more_events_than_the_bound(
    stream: bytes, blank_lines: int, data: st.DataObject
) -> None:
    cuts = sorted(data.draw(st.sets(st.integers(1, len(stream) - 1), max_size=10)))
    reads = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    decoder = CompletionStreamDecoder()
    events: list[StreamEvent] = []
    for read in reads:
        pieces = list(event_slices(read, blank_lines))
        assert b"".join(pieces) == read
        for piece in pieces:
            decoded = decoder.feed(piece)
            assert len(decoded) <= blank_lines + EXTRA_EVENTS_PER_SLICE
            events += decoded
    decoder.close()
    # Slicing changes nothing of what is decoded.
    whole = CompletionStreamDecoder()
    assert events == whole.feed(stream) + whole.close()


def test_real_events_come_in_full_batches() -> None:
    read = b"".join(token_event(n) for n in range(1, 101))
    pieces = list(event_slices(read, 29))
    assert [piece.count(b"\n\n") for piece in pieces] == [29, 29, 29, 13]
