"""The relay's WebSocket client against a scripted server speaking wsproto's server side:
whole messages from fragments, pings answered, close codes kept, a bound on a message,
on every event loop."""

from __future__ import annotations

import anyio
import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Event,
    Ping,
    Pong,
    Request,
    TextMessage,
)

from llamacpp_adapter import ProtocolError
from llamacpp_adapter._relay import ws_client as ws_client
from llamacpp_adapter._relay.ws_client import ConnectionClosed, connect

from ..support.scripted import Connection, scripted_server

pytestmark = pytest.mark.anyio


async def events_until(connection: Connection, server: WSConnection, kind: type) -> list[Event]:
    seen: list[Event] = []
    while not any(isinstance(e, kind) for e in seen):
        data = await connection.stream.receive()
        server.receive_data(data)
        seen.extend(server.events())
    return seen


def websocket_script(after_accept: list[Event], seen: list[Event]) -> object:
    async def script(connection: Connection) -> None:
        server = WSConnection(ConnectionType.SERVER)
        server.receive_data(connection.head + connection.body)
        assert any(isinstance(e, Request) for e in server.events())
        await connection.send(server.send(AcceptConnection()))
        for event in after_accept:
            await connection.send(server.send(event))
        seen.extend(await events_until(connection, server, CloseConnection))

    return script


async def test_fragments_pings_and_the_close_code() -> None:
    seen: list[Event] = []
    frames = [
        TextMessage(data="hel", message_finished=False),
        Ping(payload=b"are you there"),
        TextMessage(data="lo", message_finished=True),
        CloseConnection(code=4001, reason="bye"),
    ]
    async with scripted_server(websocket_script(frames, seen)) as server:  # type: ignore[arg-type]
        url = server.url.replace("http://", "ws://")
        async with connect(url, []) as client:
            assert await client.get_message() == "hello"
            with pytest.raises(ConnectionClosed) as closed:
                await client.get_message()
        await server.wait_idle()
    assert (closed.value.code, closed.value.reason) == (4001, "bye")
    assert Pong(payload=b"are you there") in seen
    assert any(isinstance(e, CloseConnection) and e.code == 4001 for e in seen)  # answered


async def test_a_message_past_the_bound_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ws_client, "MAX_MESSAGE_BYTES", 10)
    seen: list[Event] = []
    frames = [TextMessage(data="x" * 11)]
    async with scripted_server(websocket_script(frames, seen)) as server:  # type: ignore[arg-type]
        url = server.url.replace("http://", "ws://")
        async with connect(url, []) as client:
            with pytest.raises(ProtocolError, match="exceeds 10 bytes"):
                await client.get_message()
        await server.wait_idle()
    assert any(isinstance(e, CloseConnection) and e.code == 1009 for e in seen)


async def test_a_server_that_hangs_up_is_a_lost_connection() -> None:
    async def hang_up(connection: Connection) -> None:
        server = WSConnection(ConnectionType.SERVER)
        server.receive_data(connection.head + connection.body)
        list(server.events())
        await connection.send(server.send(AcceptConnection()))

    async with (
        scripted_server(hang_up) as server,
        connect(server.url.replace("http://", "ws://"), []) as client,
    ):
        with pytest.raises(ConnectionClosed) as closed, anyio.fail_after(5):
            await client.get_message()
    assert closed.value.code == 1006
