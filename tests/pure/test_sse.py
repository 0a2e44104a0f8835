"""SSEDecoder against the WHATWG "event stream interpretation" rules."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from llamacpp_adapter import ProtocolError, SSEDecoder, SSEEvent
from llamacpp_adapter._sansio.sse import MAX_RETRY_MS


def feed_whole(data: bytes, decoder: SSEDecoder | None = None) -> list[SSEEvent]:
    decoder = decoder or SSEDecoder()
    return decoder.feed(data) + decoder.close()


def feed_pieces(pieces: list[bytes], decoder: SSEDecoder | None = None) -> list[SSEEvent]:
    decoder = decoder or SSEDecoder()
    events: list[SSEEvent] = []
    for piece in pieces:
        events += decoder.feed(piece)
    return events + decoder.close()


def one_byte_at_a_time(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def all_ways(data: bytes) -> list[list[SSEEvent]]:
    """Decode *data* whole, split at every byte position, and one byte at a time."""
    results = [feed_whole(data), feed_pieces(one_byte_at_a_time(data))]
    results += [feed_pieces([data[:cut], data[cut:]]) for cut in range(1, len(data))]
    return results


def msg(data: str, *, event: str = "message", id: str = "", retry: int | None = None) -> SSEEvent:
    return SSEEvent(event=event, data=data, id=id, retry=retry)


WHATWG_CASES: list[tuple[str, bytes, list[SSEEvent]]] = [
    ("one event", b"data: hello\n\n", [msg("hello")]),
    ("no space after colon", b"data:hello\n\n", [msg("hello")]),
    ("only one space is dropped", b"data:  hello\n\n", [msg(" hello")]),
    ("field without colon is an empty value", b"data\n\n", [msg("")]),
    ("empty data line dispatches empty data", b"data:\n\n", [msg("")]),
    ("two empty data lines", b"data:\ndata:\n\n", [msg("\n")]),
    ("data lines joined by LF", b"data: a\ndata: b\n\n", [msg("a\nb")]),
    ("CR line ends", b"data: a\r\rdata: b\r\r", [msg("a"), msg("b")]),
    ("CRLF line ends", b"data: a\r\n\r\ndata: b\r\n\r\n", [msg("a"), msg("b")]),
    ("mixed line ends", b"data: a\r\ndata: b\rdata: c\n\r\n", [msg("a\nb\nc")]),
    ("leading BOM skipped", b"\xef\xbb\xbfdata: x\n\n", [msg("x")]),
    # The second BOM is part of the first field's name, an unknown field.
    ("only one BOM skipped", b"\xef\xbb\xbf\xef\xbb\xbfdata: x\n\ndata: y\n\n", [msg("y")]),
    ("BOM only at the start", b"data: x\n\n\xef\xbb\xbfdata: y\n\n", [msg("x")]),
    ("comment ignored", b": a comment\ndata: x\n: another\n\n", [msg("x")]),
    ("comment alone dispatches nothing", b":\n\n: x\n\n", []),
    ("event type", b"event: add\ndata: x\n\n", [msg("x", event="add")]),
    ("empty event type is message", b"event\ndata: x\n\n", [msg("x")]),
    (
        "event type reset after dispatch",
        b"event: a\ndata: 1\n\ndata: 2\n\n",
        [msg("1", event="a"), msg("2")],
    ),
    ("no dispatch without data resets type", b"event: add\n\ndata: x\n\n", [msg("x")]),
    ("id persists", b"id: 1\ndata: x\n\ndata: y\n\n", [msg("x", id="1"), msg("y", id="1")]),
    ("id with NUL ignored", b"id: 7\n\nid: a\x00b\ndata: x\n\n", [msg("x", id="7")]),
    ("empty id resets", b"id: 1\ndata: x\n\nid\ndata: y\n\n", [msg("x", id="1"), msg("y", id="")]),
    ("id set by an event without data", b"id: 1\n\nid: 2\ndata: x\n\n", [msg("x", id="2")]),
    ("retry digits", b"retry: 1000\ndata: x\n\n", [msg("x", retry=1000)]),
    ("retry persists", b"retry: 5\ndata: x\n\ndata: y\n\n", [msg("x", retry=5), msg("y", retry=5)]),
    ("retry with underscore ignored", b"retry: 1_0\ndata: x\n\n", [msg("x")]),
    ("retry with sign ignored", b"retry: +1\ndata: x\n\n", [msg("x")]),
    ("retry with extra space ignored", b"retry:  1\ndata: x\n\n", [msg("x")]),
    ("retry with non-ASCII digit ignored", "retry: \u0661\ndata: x\n\n".encode(), [msg("x")]),
    ("retry empty ignored", b"retry: 3\n\nretry\ndata: x\n\n", [msg("x", retry=3)]),
    # Past Python's limit on the digits of an int (4,300): capped, never an error.
    (
        "retry too long is capped",
        b"retry: " + b"9" * 4301 + b"\ndata: x\n\n",
        [msg("x", retry=MAX_RETRY_MS)],
    ),
    (
        "retry long, leading zeros",
        b"retry: " + b"0" * 5000 + b"12\ndata: x\n\n",
        [msg("x", retry=12)],
    ),
    ("unknown field ignored", b"foo: bar\ndata: x\n\n", [msg("x")]),
    ("field name with leading space is unknown", b" data: x\n\n", []),
    ("field names are case-sensitive", b"Data: x\n\n", []),
    ("colon in value kept", b"data: a:b: c\n\n", [msg("a:b: c")]),
    ("blank lines before first event", b"\n\n\ndata: x\n\n", [msg("x")]),
    ("unterminated last event dropped", b"data: x\n\ndata: y", [msg("x")]),
    ("event without its blank line dropped", b"data: x\n\ndata: y\n", [msg("x")]),
    (
        "only CR, LF and CRLF end a line",
        "data: a\x0bb\x0cc\x1cd\x1de\x1ef\x85g\u2028h\u2029i\n\n".encode(),
        [msg("a\x0bb\x0cc\x1cd\x1de\x1ef\x85g\u2028h\u2029i")],
    ),
    ("invalid UTF-8 becomes U+FFFD", b"data: a\xffb\xfe\n\n", [msg("a\ufffdb\ufffd")]),
    ("truncated UTF-8 sequence is one U+FFFD", b"data: \xe2\x82\n\n", [msg("\ufffd")]),
    ("multi-byte characters kept", "data: žluť 🦙\n\n".encode(), [msg("žluť 🦙")]),
    ("NUL allowed in data", b"data: a\x00b\n\n", [msg("a\x00b")]),
]


@pytest.mark.parametrize(
    ("stream", "expected"),
    [pytest.param(stream, expected, id=name) for name, stream, expected in WHATWG_CASES],
)
def test_whatwg_case_whole_split_and_byte_by_byte(stream: bytes, expected: list[SSEEvent]) -> None:
    for result in all_ways(stream):
        assert result == expected


@pytest.mark.parametrize(
    "stream",
    [
        pytest.param(stream, id=name)
        for name, stream, _ in WHATWG_CASES
        if stream.endswith((b"\n\n", b"\r\r", b"\r\n\r\n"))  # not already mid-event
    ],
)
def test_trailing_unterminated_event_changes_nothing(stream: bytes) -> None:
    expected = feed_whole(stream)
    for tail in (b"data: never dispatched", b"event: x\ndata: y\n", b"data: z\r"):
        assert feed_whole(stream + tail) == expected
        assert feed_pieces(one_byte_at_a_time(stream + tail)) == expected


def test_cr_at_end_of_feed_and_lf_at_start_of_next_are_one_line_end() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    # Were the LF a second line end, this blank line would dispatch "a" now.
    assert decoder.feed(b"\ndata: b\r") == []
    assert decoder.feed(b"\n") == []
    assert decoder.feed(b"\r\n") == [msg("a\nb")]


def test_lone_cr_then_empty_feed_then_lf() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"") == []
    assert decoder.feed(b"\n\n") == [msg("a")]


def test_multibyte_character_split_across_feeds_is_decoded_whole() -> None:
    encoded = "data: 🦙\n\n".encode()
    cut = encoded.index(b"\xf0") + 2
    decoder = SSEDecoder()
    assert decoder.feed(encoded[:cut]) == []
    assert decoder.feed(encoded[cut:]) == [msg("🦙")]


def test_bom_split_across_feeds() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"\xef") == []
    assert decoder.feed(b"\xbb") == []
    assert decoder.feed(b"\xbfdata: x\n\n") == [msg("x")]


def test_partial_bom_prefix_is_data() -> None:
    # Two bytes of a BOM and then something else: not a BOM, so part of the field name.
    assert feed_whole(b"\xef\xbbdata: x\n\ndata: y\n\n") == [msg("y")]


def test_close_resets_for_a_new_stream() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"id: 5\ndata: pending")
    assert decoder.close() == []
    assert decoder.feed(b"\xef\xbb\xbfdata: x\n\n") == [msg("x")]


# --- The bound on one event --------------------------------------------------------------


def test_event_over_the_bound_raises() -> None:
    decoder = SSEDecoder(max_event_bytes=64)
    with pytest.raises(ProtocolError, match="64 bytes"):
        decoder.feed(b"data: " + b"x" * 100 + b"\n\n")


def test_endless_line_raises_before_its_end_arrives() -> None:
    decoder = SSEDecoder(max_event_bytes=1000)
    for _ in range(10):
        assert decoder.feed(b"x" * 100) == []  # 1000 bytes with no line end: at the bound
    with pytest.raises(ProtocolError):
        decoder.feed(b"x")


def test_many_data_lines_adding_up_past_the_bound_raise() -> None:
    decoder = SSEDecoder(max_event_bytes=1000)
    line = b"data: 0123456789\n"  # 17 bytes; never a blank line
    for _ in range(50):
        assert decoder.feed(line) == []
    with pytest.raises(ProtocolError):
        decoder.feed(line * 10)


def test_endless_comment_lines_do_not_count_against_the_bound() -> None:
    decoder = SSEDecoder(max_event_bytes=100)
    for _ in range(1000):
        assert decoder.feed(b": keep-alive\n") == []
    assert decoder.feed(b"data: x\n\n") == [msg("x")]


def test_event_exactly_at_the_bound_passes() -> None:
    line = b"data: " + b"x" * 10  # 16 bytes, 17 with its line end
    assert SSEDecoder(max_event_bytes=17).feed(line + b"\n\n") == [msg("x" * 10)]
    with pytest.raises(ProtocolError):
        SSEDecoder(max_event_bytes=16).feed(line + b"\n\n")


def test_events_before_the_oversized_one_are_returned_then_the_error_raised() -> None:
    decoder = SSEDecoder(max_event_bytes=64)
    events = decoder.feed(b"data: a\n\ndata: b\n\ndata: " + b"x" * 100)
    assert events == [msg("a"), msg("b")]
    assert decoder.error is not None
    with pytest.raises(ProtocolError):
        decoder.feed(b"\n\n")
    with pytest.raises(ProtocolError):
        decoder.close()


@given(st.integers(min_value=1, max_value=300), st.data())
def test_bound_gives_same_verdict_however_the_stream_is_cut(
    bound: int, data: st.DataObject
) -> None:
    stream = data.draw(event_streams()).encoded
    cuts = sorted(data.draw(st.sets(st.integers(0, len(stream)), max_size=8)))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    whole = _outcome(lambda: feed_whole(stream, SSEDecoder(bound)))
    split = _outcome(lambda: feed_pieces(pieces, SSEDecoder(bound)))
    # Split feeds may deliver some events before raising; a whole feed raises with none
    # or returns them first. Either way the verdict and the events before it agree.
    assert whole == split


def _outcome(run: object) -> tuple[str, list[SSEEvent]]:
    events: list[SSEEvent] = []
    try:
        events = run()  # type: ignore[operator]
    except ProtocolError:
        return ("error", [])
    return ("ok", events)


def test_bad_bound_rejected() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        SSEDecoder(max_event_bytes=0)
    with pytest.raises(TypeError):
        SSEDecoder(max_event_bytes=1.5)  # type: ignore[arg-type]


# --- Properties --------------------------------------------------------------------------

LINE_ENDS = ("\n", "\r", "\r\n")
# Text with no CR or LF, but with the characters str.splitlines() wrongly splits on.
line_text = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cs",), blacklist_characters="\r\n", min_codepoint=0
    )
    | st.sampled_from(["\x0b", "\x0c", "\x1c", "\x85", "\u2028", ":", " ", "🦙", "\x00"]),
    max_size=12,
)


@dataclass
class GeneratedStream:
    encoded: bytes
    expected: list[SSEEvent]


@st.composite
def event_streams(draw: st.DrawFn) -> GeneratedStream:
    """A stream of events serialised with a random mix of line ends, with or without a
    BOM and comments, and its expected decoding from a model of the rules."""
    lines: list[str] = []
    expected: list[SSEEvent] = []
    last_id = ""
    retry: int | None = None
    for _ in range(draw(st.integers(0, 6))):
        event_type = ""
        data: list[str] = []
        for _ in range(draw(st.integers(0, 5))):
            kind = draw(
                st.sampled_from(["data", "data", "event", "id", "retry", "comment", "unknown"])
            )
            value = draw(line_text)
            if kind == "comment":
                lines.append(":" + value)
                continue
            if kind == "retry" and draw(st.booleans()):
                value = str(draw(st.integers(0, 10**6)))
            if kind == "unknown":
                lines.append("x-unknown:" + value)
                continue
            if value == "" and draw(st.booleans()):
                lines.append(kind)  # a field without a colon has an empty value
            elif not value.startswith(" ") and draw(st.booleans()):
                lines.append(f"{kind}:{value}")
            else:
                lines.append(f"{kind}: {value}")
            if kind == "data":
                data.append(value)
            elif kind == "event":
                event_type = value
            elif kind == "id" and "\x00" not in value:
                last_id = value
            elif kind == "retry" and value.isascii() and value.isdigit():
                retry = int(value)
        lines.append("")  # dispatch
        if data:
            expected.append(SSEEvent(event_type or "message", "\n".join(data), last_id, retry))
    if draw(st.booleans()):
        lines.append("data: unterminated")  # never dispatched

    text = ""
    previous_end = ""
    for line in lines:
        choices = LINE_ENDS
        if previous_end == "\r" and line == "":
            choices = ("\r", "\r\n")  # a lone LF here would join the CR as one line end
        end = draw(st.sampled_from(choices))
        text += line + end
        previous_end = end
    if lines and lines[-1].startswith("data: unterminated"):
        text = text[: -len(previous_end)]
    encoded = text.encode("utf-8")
    if draw(st.booleans()):
        encoded = b"\xef\xbb\xbf" + encoded
    return GeneratedStream(encoded, expected)


@st.composite
def cut_points(draw: st.DrawFn, size: int) -> list[int]:
    return sorted(draw(st.sets(st.integers(1, max(size - 1, 1)), max_size=20)))


@given(event_streams(), st.data())
@example(GeneratedStream(b"data: a\r\n\r\n", [msg("a")]), None)
def test_any_split_yields_the_events_of_one_whole_feed(
    stream: GeneratedStream, data: st.DataObject | None
) -> None:
    whole = feed_whole(stream.encoded)
    assert whole == stream.expected
    assert feed_pieces(one_byte_at_a_time(stream.encoded)) == whole
    if data is not None:
        cuts = data.draw(cut_points(len(stream.encoded)))
        bounds = zip([0, *cuts], [*cuts, len(stream.encoded)], strict=True)
        assert feed_pieces([stream.encoded[a:b] for a, b in bounds]) == whole


def test_a_long_retry_loses_no_event_of_its_read() -> None:
    # The event before it, in the same read, comes out; the decoder raises nothing.
    read = b"data: a\n\nretry: " + b"9" * 4301 + b"\ndata: b\n\n"
    assert SSEDecoder().feed(read) == [msg("a"), msg("b", retry=MAX_RETRY_MS)]


def test_an_unknown_field_is_ignored() -> None:
    # Older llama-server builds wrote a failure as an "error:" field: the standard
    # ignores it, and so does this decoder (the completion decoder reads it).
    assert SSEDecoder().feed(b'error: {"message":"x"}\n\n') == []


def test_at_an_event_boundary_only_between_events() -> None:
    decoder = SSEDecoder()
    assert not decoder.at_event_boundary  # a BOM may yet come
    decoder.feed(b"data: a\n\n")
    assert decoder.at_event_boundary
    decoder.feed(b": comment\n")
    assert decoder.at_event_boundary  # a comment starts no event
    for part in (b"data: b", b"\n", b"\r"):
        decoder.feed(part)
        assert not decoder.at_event_boundary
    decoder.feed(b"\n")  # the LF of the CRLF that ended the blank line
    assert decoder.at_event_boundary
