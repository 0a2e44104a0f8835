"""A stream paused at any event and resumed keeps its order, its indices and, at
temperature 0, its every byte: the decoder and its :class:`Ledger` fed llama-server's
chunks (as ``support.generation`` models them: ids left out while a UTF-8 character is
incomplete, text held back while it may begin a stop string), cut anywhere, resumed
from the ledger's resume point by a request the model runs afresh."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llamacpp_adapter import CompletionStreamDecoder, End, Metrics, Token, WorkerReset
from llamacpp_adapter._sansio.completion import continuation_body
from llamacpp_adapter._sansio.continuation import Ledger

from ..support.generation import Chunk, Piece, event_bytes, run

PROMPT_TOKENS = 5
#: Texts a token may have: words, characters of two and three bytes whole or one byte
#: at a time (so that ids go missing), a stray continuation byte (invalid UTF-8), and
#: the letters of the stop strings.
TEXTS = [
    b" the",
    b"a",
    b"b",
    b"!",
    "é".encode(),
    *[bytes([b]) for b in "é".encode()],
    "€".encode(),
    *[bytes([b]) for b in "€".encode()],
    b"\x80",
]
STOPS = [(), ("ab",), ("b!", "the")]


def piece(index: int) -> Piece:
    """The token of *index* in :data:`TEXTS`: ids from 300 up."""
    return 300 + index, TEXTS[index]


generations = st.lists(st.integers(0, len(TEXTS) - 1).map(piece), min_size=1, max_size=24)


def decode_part(
    ledger: Ledger | None, chunks: list[Chunk], *, start: int, part: int
) -> list[object]:
    decoder = CompletionStreamDecoder(ledger=ledger)
    data = b"".join(
        event_bytes(chunk, evaluated=PROMPT_TOKENS + start, part=part) for chunk in chunks
    )
    return decoder.feed(data) + (decoder.close() if chunks and chunks[-1].final else [])


def tokens(events: list[object]) -> list[Token]:
    return [e for e in events if isinstance(e, Token)]


@settings(max_examples=1000, deadline=None)
@given(
    generated=generations,
    stops=st.sampled_from(STOPS),
    # Small cuts too, which pause a resumed stream again before it gave back the events
    # the consumer has.
    cuts=st.lists(st.one_of(st.integers(0, 2), st.integers(0, 24)), max_size=3),
)
def test_a_greedy_stream_paused_anywhere_and_resumed_is_the_stream_never_paused(
    generated: list[Piece], stops: tuple[str, ...], cuts: list[int]
) -> None:
    whole = decode_part(None, run(generated, stops), start=0, part=0)
    ledger = Ledger(greedy=True, stops=bool(stops), max_tokens=len(generated))
    received: list[object] = []
    start = 0
    predicted = 0  # the engine's count over the parts, as their timings say
    for part, cut in enumerate([*cuts, None]):
        chunks = run(generated[start:], stops)  # greedy: the same tokens again
        if cut is not None and cut >= len(chunks) - 1:
            cut = None  # the stream ends before that cut
        sent = chunks if cut is None else chunks[:cut]
        received += decode_part(ledger, sent, start=start, part=part)
        if sent:
            predicted += sent[-1].predicted
        if cut is None:
            break
        assert ledger.can_resume(regenerate=len(generated))
        ids, point = ledger.continuation()
        assert ids == [token_id for token_id, _ in generated[:point]]
        ledger.resume()
        start = point

    assert tokens(received) == tokens(whole)
    assert [t.i for t in tokens(received)] == list(range(len(tokens(whole))))
    assert received[-1] == whole[-1]  # the End: tokens out, tokens in, the reason
    metrics = received[-2]
    assert isinstance(metrics, Metrics)
    assert metrics.predicted_tokens == predicted
    assert metrics.predicted_ms == pytest.approx(0.25 * predicted)


@settings(max_examples=300, deadline=None)
@given(
    generated=generations,
    resumed=generations,
    stops=st.sampled_from(STOPS),
    cut=st.integers(0, 40),
)
def test_a_sampled_stream_resumes_only_where_it_can_and_keeps_its_order(
    generated: list[Piece], resumed: list[Piece], stops: tuple[str, ...], cut: int
) -> None:
    chunks = run(generated, stops)
    cut = min(cut, len(chunks) - 1)
    ledger = Ledger(greedy=False, stops=bool(stops), max_tokens=None)
    first = decode_part(ledger, chunks[:cut], start=0, part=0)
    ids, point = ledger.continuation()
    if not ledger.can_resume(regenerate=len(generated)):
        # An id was left out after the last resume point: no exact continuation.
        assert point < ledger.tokens
        return
    assert point == ledger.tokens
    assert ids == [token_id for token_id, _ in generated[:point]]
    ledger.resume()
    then = decode_part(ledger, run(resumed, stops), start=point, part=1)
    events = tokens(first) + tokens(then)
    assert [t.i for t in events] == list(range(len(events)))
    assert events[: len(tokens(first))] == tokens(first)  # nothing dropped or repeated
    end = then[-1]
    assert isinstance(end, End)
    assert end.tokens_out == point + (run(resumed, stops)[-1].predicted)
    assert end.tokens_in == PROMPT_TOKENS


def test_a_stream_paused_again_before_it_gave_back_what_the_consumer_has() -> None:
    generated = [piece(4), piece(5), piece(6), piece(1), piece(0)]  # é, é a byte at a time
    whole = decode_part(None, run(generated), start=0, part=0)
    ledger = Ledger(greedy=True, stops=False, max_tokens=len(generated))
    received = decode_part(ledger, run(generated)[:3], start=0, part=0)
    assert ledger.continuation() == ([304], 1)
    ledger.resume()
    received += decode_part(ledger, run(generated[1:])[:0], start=1, part=1)  # cut at once
    assert ledger.continuation() == ([304], 1)
    ledger.resume()
    received += decode_part(ledger, run(generated[1:]), start=1, part=2)
    assert tokens(received) == tokens(whole)


def test_tokens_generated_again_that_differ_fail_the_stream() -> None:
    generated = [piece(4), piece(5), piece(6), piece(1)]  # "é", then "é" a byte at a time
    ledger = Ledger(greedy=True, stops=False, max_tokens=10)
    decode_part(ledger, run(generated)[:3], start=0, part=0)
    _ids, point = ledger.continuation()
    assert point == 1  # the second "é" left an id out: the last resume point is the first
    ledger.resume()
    other = [piece(5), piece(6), piece(2)]  # "é", then "b" where "a" was
    decoder = CompletionStreamDecoder(ledger=ledger)
    first = [event_bytes(c, evaluated=6, part=1) for c in run(other)]
    assert decoder.feed(first[0]) == []  # the "é" again: dropped
    with pytest.raises(WorkerReset, match="did not generate again"):
        decoder.feed(first[1])


def test_a_resumed_stream_that_ends_before_the_tokens_it_had_fails() -> None:
    ledger = Ledger(greedy=True, stops=False, max_tokens=10)
    generated = [piece(5), piece(6), piece(0), piece(0)]
    decode_part(ledger, run(generated)[:2], start=0, part=0)
    ledger.resume()
    decoder = CompletionStreamDecoder(ledger=ledger)
    final = event_bytes(Chunk("", [], 0, True, "eos"), evaluated=5, part=1)
    with pytest.raises(WorkerReset, match="ended before"):
        decoder.feed(final)


def test_the_body_of_a_resume() -> None:
    fields = {"prompt": "hi", "n_predict": 100, "temperature": 0.0, "seed": 7, "stream": True}
    body = continuation_body(fields, [5, 6, 7], 97)
    assert body == {**fields, "prompt": ["hi", 5, 6, 7], "n_predict": 97}
    ids = continuation_body({**fields, "prompt": [1, 2]}, [5], None)
    assert ids["prompt"] == [1, 2, 5]
    assert ids["n_predict"] == -1
    sampled = continuation_body({**fields, "temperature": 0.8, "seed": 2**32 - 1}, [5, 6], 98)
    assert sampled["seed"] == 1  # moved on by the tokens generated, within 32 bits
    assert json.loads(json.dumps(sampled)) == sampled
    assert fields["prompt"] == "hi"  # the first body is left as it was
