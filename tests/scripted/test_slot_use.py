"""``adapter.slot_use()`` against a server: ``GET /slots`` read into a memory mapping of
its own, counted there, and unmapped; an answer that does not say its length is read
as any other; an answer past the bound, or longer than it said, or not a list of slots,
is a :class:`ProtocolError`, and an error status the engine's error (:class:`AdapterError`)."""

from __future__ import annotations

import json

import pytest

from llamacpp_adapter import AdapterError, LlamaCppHttpAdapter, ProtocolError, SlotUse, WorkerError
from llamacpp_adapter._requests import MAX_JSON_BODY_BYTES

from ..support.scripted import Connection, Script, scripted_server
from ..support.wire import SLOTS, chunked, json_response, raw_json_response

pytestmark = pytest.mark.anyio

#: A server of 3,000 slots, every third one busy: 4 MB of JSON.
MANY = json.dumps(
    [dict(json.loads(SLOTS)[0], id=i, is_processing=i % 3 == 0) for i in range(3_000)]
).encode()


def answering(answer: bytes) -> Script:
    async def handle(connection: Connection) -> None:
        await connection.send(answer)

    return handle


async def slot_use(answer: bytes) -> SlotUse:
    """What ``slot_use()`` gives (or raises: outside the server's task group, as
    itself) against a server that gives *answer*."""
    failure: WorkerError | None = None
    async with (
        scripted_server(answering(answer)) as server,
        LlamaCppHttpAdapter(server.url) as adapter,
    ):
        try:
            return await adapter.slot_use()
        except WorkerError as exc:
            failure = exc
    assert failure is not None
    raise failure


async def test_megabytes_of_slots_are_counted() -> None:
    assert len(MANY) > 1_000_000
    assert await slot_use(raw_json_response(200, "OK", MANY)) == SlotUse(total=3_000, busy=1_000)


async def test_an_answer_that_does_not_say_its_length_is_counted_too() -> None:
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    pieces = b"".join(chunked(MANY[i : i + 65_536]) for i in range(0, len(MANY), 65_536))
    answer = head + pieces + b"0\r\n\r\n"
    assert await slot_use(answer) == SlotUse(total=3_000, busy=1_000)


async def test_an_answer_past_the_bound_is_refused_before_it_is_read() -> None:
    head = (
        f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        f"Content-Length: {MAX_JSON_BODY_BYTES + 1}\r\nConnection: close\r\n\r\n"
    ).encode()
    with pytest.raises(ProtocolError, match=r"GET /slots: an answer of more than"):
        await slot_use(head + b"[")


async def test_an_answer_cut_short_of_its_length_fails() -> None:
    answer = raw_json_response(200, "OK", MANY)
    with pytest.raises(WorkerError, match="GET /slots"):
        await slot_use(answer[: len(answer) // 2])


async def test_an_answer_that_is_not_a_list_of_slots_is_a_protocol_error() -> None:
    # Named once: the decoder's message says what was asked.
    with pytest.raises(ProtocolError, match=r"^GET /slots did not return a JSON list"):
        await slot_use(raw_json_response(200, "OK", b'{"slots": 3}'))


async def test_an_error_status_is_the_engine_s_error() -> None:
    body = {"error": {"code": 501, "message": "slots endpoint disabled", "type": "x"}}
    with pytest.raises(AdapterError, match="slots endpoint disabled"):
        await slot_use(json_response(501, "Not Implemented", body))
