"""HTTP/1.1 for the streamed completion, without sockets: the request's bytes, and the
answer's head and body from a real capture, cut at every boundary."""

from __future__ import annotations

import itertools

import httptools
import pytest
from hypothesis import given
from hypothesis import strategies as st

from llamacpp_adapter import ProtocolError
from llamacpp_adapter._sansio.http11 import MAX_HEAD_BYTES, ResponseParser, request_bytes

from ..support.wire import LAST_CHUNK, STREAM_HEAD, chunked, final_event, token_event

BODY = token_event(1, " héllo") + token_event(2, " wörld") + final_event(2)
CHUNKED_ANSWER = STREAM_HEAD + chunked(BODY[:50]) + chunked(BODY[50:]) + LAST_CHUNK


def feed_all(parser: ResponseParser, pieces: list[bytes]) -> bytes:
    return b"".join(parser.feed(piece) for piece in pieces)


def cut(data: bytes, points: list[int]) -> list[bytes]:
    bounds = [0, *sorted({p % (len(data) + 1) for p in points}), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def test_the_captured_stream_answer_gives_its_head_and_body() -> None:
    parser = ResponseParser()
    body = parser.feed(CHUNKED_ANSWER)
    assert parser.head_complete
    assert parser.complete
    assert parser.status == 200
    assert parser.reason == "OK"
    assert parser.headers["content-type"].startswith("text/event-stream")
    assert parser.headers["transfer-encoding"] == "chunked"
    assert body == BODY


@given(points=st.lists(st.integers(min_value=0), max_size=12))
def test_any_cut_of_the_answer_gives_the_same_body(points: list[int]) -> None:
    parser = ResponseParser()
    assert feed_all(parser, cut(CHUNKED_ANSWER, points)) == BODY
    assert parser.complete


def test_the_body_is_not_whole_until_the_last_chunk() -> None:
    parser = ResponseParser()
    parser.feed(CHUNKED_ANSWER[: -len(LAST_CHUNK)])
    assert not parser.complete
    parser.feed_eof()  # a chunked body cut by a close is not whole
    assert not parser.complete


def test_a_json_answer_with_a_length() -> None:
    head = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 7\r\n\r\n"
    parser = ResponseParser()
    assert parser.feed(head + b"loading") == b"loading"
    assert (parser.status, parser.reason, parser.complete) == (503, "Service Unavailable", True)


def test_an_answer_that_runs_to_the_close() -> None:
    parser = ResponseParser()
    assert parser.feed(b"HTTP/1.1 500 Oops\r\nX-A: 1\r\nX-A: 2\r\n\r\nsome") == b"some"
    assert not parser.complete
    assert parser.feed(b" text") == b" text"
    parser.feed_eof()
    assert parser.complete
    assert parser.headers["x-a"] == "1, 2"


def test_bytes_after_the_answer_are_not_its_own() -> None:
    parser = ResponseParser()
    assert parser.feed(CHUNKED_ANSWER + b"HTTP/1.1 200 OK\r\n") == BODY
    assert parser.feed(b"more") == b""


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # a bad chunk size
        b"HTTX/1.1 200 OK\r\n\r\n",  # not HTTP
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    ],
)
def test_malformed_http_is_a_protocol_error(answer: bytes) -> None:
    with pytest.raises(ProtocolError):
        ResponseParser().feed(answer)


def test_a_head_over_the_bound_is_refused() -> None:
    parser = ResponseParser()
    parser.feed(b"HTTP/1.1 200 OK\r\n")
    with pytest.raises(ProtocolError, match="head"):
        for _ in range(MAX_HEAD_BYTES // 1000 + 2):
            parser.feed(b"X-Filler: " + b"a" * 990 + b"\r\n")


def test_the_request_bytes() -> None:
    data = request_bytes(
        "POST", "/completion", "127.0.0.1:8080", {"Content-Type": "application/json"}, b"{}"
    )
    assert data == (
        b"POST /completion HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Length: 2\r\n"
        b"Content-Type: application/json\r\n\r\n{}"
    )
    # What a server's parser reads back.
    seen: dict[str, object] = {}

    class Sink:
        def on_url(self, url: bytes) -> None:
            seen["url"] = url

        def on_body(self, body: bytes) -> None:
            seen["body"] = body

    parser = httptools.HttpRequestParser(Sink())
    parser.feed_data(data)
    assert (parser.get_method(), seen) == (b"POST", {"url": b"/completion", "body": b"{}"})


@pytest.mark.parametrize("value", ["a\r\nX-Evil: 1", "a\nb", "a\0b"])
def test_a_header_with_a_line_break_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="line break"):
        request_bytes("POST", "/", "h", {"X": value}, b"")


def test_the_body_before_malformed_http_is_given_first() -> None:
    parser = ResponseParser()
    body = parser.feed(STREAM_HEAD + chunked(token_event(1)) + b"zz\r\n")
    assert body == token_event(1)
    assert isinstance(parser.error, ProtocolError)
    with pytest.raises(ProtocolError):
        parser.feed(b"more")
