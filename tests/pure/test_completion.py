"""CompletionStreamDecoder against streams captured from a real llama-server, and the
faults a stream can hold."""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llamacpp_adapter import (
    CompletionStreamDecoder,
    End,
    EngineError,
    Metrics,
    PromptProgress,
    ProtocolError,
    SSEDecoder,
    StreamEvent,
    TaskRequest,
    Token,
    WorkerError,
    WorkerReset,
    completion_body,
)
from llamacpp_adapter._sansio.completion import EXTRA_EVENTS_PER_SLICE
from llamacpp_adapter._sansio.sse import DEFAULT_MAX_EVENT_BYTES

from ..support.wire import final_event, token_event

GOLDEN = Path(__file__).parents[1] / "support" / "golden"
#: The captured /completion streams (the chat endpoint's are ``chat_*``).
GOLDEN_CASES = sorted(
    p.name.removesuffix(".sse") for p in GOLDEN.glob("*.sse") if not p.name.startswith("chat_")
)


def decode(pieces: list[bytes], **kwargs: Any) -> list[StreamEvent]:
    decoder = CompletionStreamDecoder(**kwargs)
    events: list[StreamEvent] = []
    for piece in pieces:
        events += decoder.feed(piece)
    return events + decoder.close()


def reads(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def sse(*payloads: str, line_end: str = "\n") -> bytes:
    return "".join(f"data: {p}{line_end}{line_end}" for p in payloads).encode()


def chunk(content: str, predicted: int, tokens: list[int] | None = None) -> str:
    return json.dumps(
        {
            "index": 0,
            "content": content,
            "tokens": tokens if tokens is not None else [predicted + 100],
            "stop": False,
            "id_slot": -1,
            "tokens_predicted": predicted,
            "tokens_evaluated": 3,
        }
    )


def final(predicted: int, stop_type: str = "limit") -> str:
    return json.dumps(
        {
            "index": 0,
            "content": "",
            "tokens": [],
            "stop": True,
            "tokens_predicted": predicted,
            "tokens_evaluated": 3,
            "truncated": False,
            "stop_type": stop_type,
            "stopping_word": "",
            "timings": {
                "cache_n": 0,
                "prompt_n": 3,
                "prompt_ms": 1.5,
                "prompt_per_second": 2000.0,
                "predicted_n": predicted,
                "predicted_ms": 2.0,
                "predicted_per_second": 500.0 * predicted,
            },
        }
    )


# --- Golden streams from a real llama-server ---------------------------------------------


@pytest.mark.parametrize("name", GOLDEN_CASES)
@pytest.mark.parametrize("read_size", [None, 4096, 64, 1])
def test_golden_stream_maps_to_what_the_server_returns_unstreamed(
    name: str, read_size: int | None
) -> None:
    stream = (GOLDEN / f"{name}.sse").read_bytes()
    unstreamed = json.loads((GOLDEN / f"{name}.final.json").read_text())
    last_chunk = json.loads(stream.strip().split(b"\n\n")[-1].removeprefix(b"data: "))

    events = decode([stream] if read_size is None else reads(stream, read_size))

    tokens = [e for e in events if isinstance(e, Token)]
    assert [type(e) for e in events] == [Token] * len(tokens) + [Metrics, End]
    assert [t.i for t in tokens] == list(range(len(tokens)))
    # Each token is its chunk, exactly.
    chunks = [json.loads(line.removeprefix(b"data: ")) for line in stream.strip().split(b"\n\n")]
    streamed_text = "".join(t.text for t in tokens)
    if chunks[-1]["tokens_predicted"] == chunks[-2]["tokens_predicted"]:
        assert streamed_text == unstreamed["content"]
    else:
        # At the length limit llama.cpp drops a held-back incomplete UTF-8 tail from the
        # stream (the unstreamed text shows it as U+FFFD); its tokens are still counted.
        assert unstreamed["content"] == streamed_text + "\ufffd"
    assert [(t.text, list(t.token_ids)) for t in tokens] == [
        (c["content"], c["tokens"]) for c in chunks[:-1]
    ]
    # llama.cpp leaves out the ids of tokens it held back while a UTF-8 character was
    # incomplete, so the streamed ids are the unstreamed ones with some left out.
    streamed_ids = [i for t in tokens for i in t.token_ids]
    remaining = iter(unstreamed["tokens"])
    assert all(token_id in remaining for token_id in streamed_ids)
    assert len(tokens) <= unstreamed["tokens_predicted"]

    metrics, end = events[-2], events[-1]
    assert isinstance(metrics, Metrics)
    assert isinstance(end, End)
    assert end.tokens_out == unstreamed["tokens_predicted"]
    assert end.tokens_in == unstreamed["tokens_evaluated"]
    assert end.stop_reason == unstreamed["stop_type"]
    assert end.truncated == unstreamed["truncated"]
    assert end.stop_word == (unstreamed["stopping_word"] or None)
    timings = last_chunk["timings"]
    assert metrics.predicted_tokens == timings["predicted_n"]
    assert metrics.prompt_tokens == timings["prompt_n"]
    assert metrics.prompt_ms == timings["prompt_ms"]
    assert metrics.predicted_tokens_per_s == timings["predicted_per_second"]
    assert metrics.cached_tokens == timings["cache_n"]


def test_golden_cases_cover_each_stop_reason() -> None:
    reasons = {
        json.loads((GOLDEN / f"{n}.final.json").read_text())["stop_type"] for n in GOLDEN_CASES
    }
    assert reasons >= {"eos", "limit", "word"}


def test_golden_stream_with_crlf_line_ends_maps_the_same() -> None:
    # The same stream through the general decoder (no fast path: every line ends CRLF).
    stream = (GOLDEN / "long.sse").read_bytes()
    assert decode([stream.replace(b"\n", b"\r\n")]) == decode([stream])


# --- Faults inside a stream --------------------------------------------------------------


def test_error_in_stream_raised_after_the_tokens_before_it() -> None:
    decoder = CompletionStreamDecoder()
    error = '{"error":{"code":500,"message":"slot crashed","type":"server_error"}}'
    events = decoder.feed(sse(chunk("a", 1), chunk("b", 2), error))
    assert [e.text for e in events if isinstance(e, Token)] == ["a", "b"]
    assert isinstance(decoder.error, EngineError)
    with pytest.raises(EngineError, match="slot crashed") as info:
        decoder.feed(b"")
    assert info.value.error_type == "server_error"
    assert info.value.engine_code == 500
    with pytest.raises(EngineError):
        decoder.close()


def test_error_as_first_chunk_raises_at_once() -> None:
    with pytest.raises(EngineError, match="boom"):
        CompletionStreamDecoder().feed(sse('{"error":{"message":"boom"}}'))


def test_error_as_a_plain_string_is_an_engine_error() -> None:
    with pytest.raises(EngineError, match="out of memory"):
        CompletionStreamDecoder().feed(sse('{"error":"out of memory"}'))


def test_stream_ending_before_final_chunk_is_a_worker_reset() -> None:
    decoder = CompletionStreamDecoder()
    decoder.feed(sse(chunk("a", 1), chunk("b", 2)))
    with pytest.raises(WorkerReset):
        decoder.close()


def test_stream_ending_mid_event_is_a_worker_reset() -> None:
    decoder = CompletionStreamDecoder()
    decoder.feed(sse(chunk("a", 1))[:-1] + b'data: {"content":')
    with pytest.raises(WorkerReset):
        decoder.close()


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        ('{"stop":false,"tokens_predicted":1}', "'content'"),
        ('{"content":"x","tokens_predicted":1}', "'stop'"),
        ('{"content":5,"stop":false}', "bad JSON"),
        ('{"content":"x","stop":false', "bad JSON"),
        ("[1, 2]", "bad JSON"),
        ("not json", "bad JSON"),
        ('{"content":"x","stop":false} {"content":"y","stop":false}', "bad JSON"),
        ('{"content":"x","stop":false,"new":' + "[" * 20_000 + "]" * 20_000 + "}", "bad JSON"),
    ],
)
def test_bad_chunk_is_a_protocol_error_after_the_tokens_before_it(payload: str, match: str) -> None:
    decoder = CompletionStreamDecoder()
    events = decoder.feed(sse(chunk("a", 1), payload))
    assert events == [Token(0, "a", (101,))]
    with pytest.raises(ProtocolError, match=match):
        decoder.feed(b"")


def test_token_count_going_backwards_is_logged_and_raised(caplog: pytest.LogCaptureFixture) -> None:
    decoder = CompletionStreamDecoder()
    with caplog.at_level(logging.WARNING, logger="llamacpp_adapter"):
        events = decoder.feed(sse(chunk("a", 1), chunk("b", 2), chunk("c", 2)))
    assert [e.i for e in events if isinstance(e, Token)] == [0, 1]
    assert any("out of order" in r.getMessage() for r in caplog.records)
    with pytest.raises(ProtocolError, match="from 2 to 2"):
        decoder.close()


def test_data_after_final_chunk_is_a_protocol_error() -> None:
    decoder = CompletionStreamDecoder()
    events = decoder.feed(sse(chunk("a", 1), final(1), chunk("b", 2)))
    assert isinstance(events[-1], End)
    with pytest.raises(ProtocolError, match="after the stream's final chunk"):
        decoder.close()


def test_data_after_final_chunk_in_a_later_read_is_a_protocol_error() -> None:
    decoder = CompletionStreamDecoder()
    decoder.feed(sse(chunk("a", 1), final(1)))
    assert decoder.finished
    with pytest.raises(ProtocolError):
        decoder.feed(sse(chunk("b", 2)))


def test_invalid_utf8_in_content_becomes_replacement_characters() -> None:
    raw = (
        sse(chunk("a", 1)) + b'data: {"content":"\xff\xfeb","stop":false,"tokens_predicted":2}\n\n'
    )
    events = decode([raw + sse(final(2))])
    assert [e.text for e in events if isinstance(e, Token)] == ["a", "\ufffd\ufffdb"]


def test_event_over_the_bound_is_a_protocol_error_after_earlier_tokens() -> None:
    decoder = CompletionStreamDecoder(max_event_bytes=256)
    events = decoder.feed(sse(chunk("a", 1), chunk("x" * 500, 2)))
    assert events == [Token(0, "a", (101,))]
    with pytest.raises(ProtocolError, match="256 bytes"):
        decoder.close()


def test_final_chunk_with_content_yields_a_token_first() -> None:
    last = json.loads(final(2))
    last.update(content="!", tokens=[7])
    events = decode([sse(chunk("a", 1), json.dumps(last))])
    assert events[:2] == [Token(0, "a", (101,)), Token(1, "!", (7,))]
    assert isinstance(events[-1], End)


def test_final_chunk_without_timings_still_ends() -> None:
    last = json.loads(final(1))
    del last["timings"]
    events = decode([sse(chunk("a", 1), json.dumps(last))])
    assert [type(e) for e in events] == [Token, End]


def test_other_event_types_are_ignored() -> None:
    stream = b"event: ping\ndata: {}\n\n" + sse(chunk("a", 1), final(1))
    assert [type(e) for e in decode([stream])] == [Token, Metrics, End]


# --- The batched fast path gives exactly what one-at-a-time decoding gives ----------------

_VALID = [chunk("a", 1), chunk("b c", 2), '{"content":"x","stop":false}', "{}", '{"a":[{"b":{}}]}']


@st.composite
def payload_lists(draw: st.DrawFn) -> list[str]:
    """Payloads that are valid chunks, or valid JSON cut at random places so that a
    value may spill from one payload into the next (which a naive batch would accept)."""
    text = draw(
        st.lists(st.sampled_from(_VALID), min_size=1, max_size=6).map(
            lambda parts: draw(st.sampled_from([" ", "", ","])).join(parts)
        )
    )
    # Cut anywhere, and often just after a ":", where a value is sure to spill over.
    colons = [i + 1 for i, c in enumerate(text) if c == ":"]
    anywhere = st.integers(1, max(len(text) - 1, 1))
    cut_at = st.one_of(anywhere, st.sampled_from(colons)) if colons else anywhere
    cuts = sorted(draw(st.sets(cut_at, max_size=4)))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    return [p for p in pieces if p]


def outcome(*reads: bytes) -> tuple[list[StreamEvent], type[WorkerError] | None]:
    decoder = CompletionStreamDecoder()
    events: list[StreamEvent] = []
    try:
        for data in reads:
            events += decoder.feed(data)
        if decoder.error is not None:
            raise decoder.error
    except WorkerError as exc:
        return events, type(exc)
    return events, None


@given(payload_lists())
def test_batched_decoding_equals_one_payload_at_a_time(payloads: list[str]) -> None:
    # The first read of a stream takes the general path (it may start with a BOM); the
    # second is a run of one-line events, decoded as a batch.
    prefix = sse(chunk("first", 1))
    batched = outcome(prefix, sse(*payloads))
    # A comment before each event takes it through the SSE decoder, a payload at a time.
    one_by_one = outcome(prefix, b"".join(b": general\n" + sse(p) for p in payloads))
    assert batched == one_by_one


def test_payload_spilling_into_the_next_is_not_accepted_by_the_batch() -> None:
    # Joined by LF these two would decode as two chunks; alone, the first is bad JSON.
    payloads = ['{"content":', '"a","stop":false} {"content":"b","stop":false}']
    events, error = outcome(sse(chunk("first", 1)), sse(*payloads))
    assert error is ProtocolError
    assert events == [Token(0, "first", (101,))]


def test_a_long_retry_field_is_no_failure_of_the_stream() -> None:
    decoder = CompletionStreamDecoder()
    read = token_event(1) + b"retry: " + b"9" * 4301 + b"\n\n" + token_event(2)
    events = decoder.feed(read)
    assert [e.i for e in events if isinstance(e, Token)] == [0, 1]


def test_a_mid_stream_error_as_older_builds_send_it_is_an_engine_error() -> None:
    # Older llama-server builds write a failure as an "error:" field, not in "data:".
    decoder = CompletionStreamDecoder()
    failure = b'error: {"code":500,"message":"slot failed","type":"server_error"}\n\n'
    events = decoder.feed(token_event(1) + failure)
    assert [type(e) for e in events] == [Token]
    with pytest.raises(EngineError) as info:
        decoder.feed(b"")
    assert (info.value.message, info.value.error_type) == ("slot failed", "server_error")


# --- Reads sliced by a limit, and the fast path against the standard rules ----------------

SMALLEST = b'data:{"content":"","stop":false}\n\n'
FINAL = final_event(0).replace(b'"tokens_predicted":0', b'"tokens_predicted":9999')


@st.composite
def llama_streams(draw: st.DrawFn) -> bytes:
    """Streams of llama.cpp's events, with what else the standard allows between them:
    comments, blank lines, other event types, data over several lines, a BOM, and any
    line end."""
    parts = [_BOM] if draw(st.booleans()) else []
    for n in range(1, draw(st.integers(1, 80)) + 1):
        kind = draw(
            st.sampled_from(["real"] * 5 + ["smallest", "comment", "blank", "typed", "lines"])
        )
        if kind == "real":
            parts.append(token_event(n))
        elif kind == "smallest":
            parts.append(SMALLEST)
        elif kind == "comment":
            parts.append(b": keep-alive\n")
        elif kind == "blank":
            parts.append(b"\n")
        elif kind == "typed":
            parts.append(b"event: ping\ndata: {}\n\n")
        else:
            parts.append(b'data: {"content":"x",\ndata: "stop":false}\n\n')
    parts.append(FINAL)
    stream = b"".join(parts)
    line_end = draw(st.sampled_from([b"\n", b"\r\n", b"\r"]))
    return stream.replace(b"\n", line_end) if line_end != b"\n" else stream


_BOM = b"\xef\xbb\xbf"


def cut(stream: bytes, data: st.DataObject) -> list[bytes]:
    cuts = sorted(data.draw(st.sets(st.integers(1, len(stream) - 1), max_size=12)))
    return [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]


def by_the_standard(
    stream: bytes, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
) -> tuple[list[StreamEvent], type[WorkerError] | None]:
    """The events of *stream* by the WHATWG rules alone, and the error that ended them:
    each message event's data handed to the decoder on its own, behind a comment, so
    that none takes the fast path."""
    reference = CompletionStreamDecoder()
    events: list[StreamEvent] = []
    standard = SSEDecoder(max_event_bytes)
    try:
        for event in standard.feed(stream):
            if event.event == "message":
                lines = "".join(f"data: {line}\n" for line in event.data.split("\n"))
                events += reference.feed(b": general\n" + lines.encode() + b"\n")
        if standard.error is not None:
            raise standard.error  # after the events before it
        events += reference.close()
    except WorkerError as exc:
        return events, type(exc)
    return events, None


@given(
    llama_streams(), st.integers(1, 30), st.sampled_from([DEFAULT_MAX_EVENT_BYTES, 200]), st.data()
)
def test_no_batch_holds_more_events_than_its_limit(
    stream: bytes, limit: int, max_event_bytes: int, data: st.DataObject
) -> None:
    decoder = CompletionStreamDecoder(max_event_bytes=max_event_bytes)
    events: list[StreamEvent] = []
    error: type[WorkerError] | None = None
    try:
        for read in cut(stream, data):
            decoder.receive_data(read)
            while batch := decoder.next_events(limit):
                assert len(batch) <= limit + EXTRA_EVENTS_PER_SLICE
                events += batch
        events += decoder.close()
    except WorkerError as exc:
        error = type(exc)
    # Slicing changes nothing of what is decoded, nor does the fast path, nor does a bound
    # met on the way (judged by the standard's rules either way).
    assert (events, error) == by_the_standard(stream, max_event_bytes)


def test_real_events_come_in_full_batches() -> None:
    decoder = CompletionStreamDecoder()
    decoder.feed(token_event(1))  # past the start of the stream
    decoder.receive_data(b"".join(token_event(n) for n in range(2, 102)))
    sizes = []
    while batch := decoder.next_events(29):
        sizes.append(len(batch))
    assert sizes == [29, 29, 29, 13]


def test_a_trickle_of_one_event_is_decoded_whole() -> None:
    decoder = CompletionStreamDecoder()
    events: list[StreamEvent] = []
    for n in range(len(token_event(1))):
        events += decoder.feed(token_event(1)[n : n + 1])
    assert events == [Token(0, " word", (301,))]


def test_a_crlf_split_across_reads_is_one_line_end() -> None:
    decoder = CompletionStreamDecoder()
    event = token_event(1).replace(b"\n", b"\r\n")
    events = decoder.feed(event[:-1]) + decoder.feed(event[-1:])  # "\r" | "\n"
    assert events == [Token(0, " word", (301,))]
    assert decoder.feed(token_event(2)) == [Token(1, " word", (302,))]


def test_bytes_past_the_bound_with_no_blank_line_are_a_protocol_error() -> None:
    decoder = CompletionStreamDecoder(max_event_bytes=100)
    assert decoder.feed(b"data: " + b"x" * 50) == []
    with pytest.raises(ProtocolError, match="100 bytes"):
        decoder.feed(b"x" * 50)


def test_an_oversized_tail_after_events_returns_them_then_raises() -> None:
    decoder = CompletionStreamDecoder(max_event_bytes=300)
    tail = b"data: " + b"x" * 320
    assert decoder.feed(token_event(1) + tail) == [Token(0, " word", (301,))]
    with pytest.raises(ProtocolError):
        decoder.feed(b"\n\n")
    assert isinstance(decoder.error, ProtocolError)  # and every later call raises it
    with pytest.raises(ProtocolError):
        decoder.close()


def test_a_long_event_of_comments_is_judged_by_its_data() -> None:
    # Raw bytes past the bound, but comments do not count: the standard's rules judge.
    decoder = CompletionStreamDecoder(max_event_bytes=300)
    events = decoder.feed(token_event(1))
    events += decoder.feed((b": " + b"c" * 50 + b"\n") * 10)  # 530 bytes, no blank line
    events += decoder.feed(token_event(2) + token_event(3))
    assert [e.i for e in events if isinstance(e, Token)] == [0, 1, 2]


def progress_event(done: int, total: int = 8002) -> bytes:
    """A chunk of llama-server's prompt progress (``return_progress``), as it writes it:
    an empty content, a token id 0 and a count of 0 tokens generated."""
    progress = {"total": total, "cache": 0, "processed": done, "time_ms": done // 40}
    chunk = {
        "index": 0,
        "content": "",
        "tokens": [0],
        "stop": False,
        "id_slot": -1,
        "tokens_predicted": 0,
        "tokens_evaluated": total,
        "prompt_progress": progress,
    }
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


@given(st.lists(st.integers(1, 200), max_size=3))
def test_prompt_progress_comes_as_its_events_before_the_tokens(cuts: list[int]) -> None:
    data = progress_event(0) + progress_event(512) + progress_event(1024)
    data += token_event(1, "a") + token_event(2, "b") + final_event(2)
    bounds = sorted({c % len(data) for c in cuts} | {0, len(data)})
    events = decode([data[a:b] for a, b in itertools.pairwise(bounds)])
    assert events[:3] == [
        PromptProgress(8002, 0, 0, 0),
        PromptProgress(8002, 0, 512, 12),
        PromptProgress(8002, 0, 1024, 25),
    ]
    assert [e.i for e in events if isinstance(e, Token)] == [0, 1]


def test_a_request_asks_for_progress_only_when_told() -> None:
    assert completion_body(TaskRequest("x", prompt_progress=True))["return_progress"] is True
    assert "return_progress" not in completion_body(TaskRequest("x"))
    with pytest.raises(ValueError, match="prompt_progress"):
        TaskRequest("x", extra={"return_progress": True})
