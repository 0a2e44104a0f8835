"""The relay command against hostile clients, as an operator runs it: its own process in
front of a real llama-server, clients on raw sockets. No client, however it behaves,
stops the relay, holds its descriptors, or keeps a correct client from its stream."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import pytest
import trio
from wsproto import WSConnection
from wsproto.events import TextMessage

from llamacpp_adapter import End, TaskRequest, Token, open_relay_stream
from llamacpp_adapter._local.server import LocalLlamaServer

from ..support.rawws import (
    CLOSE_WITHIN_S,
    closes,
    connect,
    events_to_eof,
    frame,
    handshake,
    read_to_eof,
    reset_on_close,
)
from ..support.rawws import open_websocket as open_raw_websocket

TOKEN = "relay-token-hostile-5d0c8e"
#: For the tests of what follows a refusal: every wrong token answered at once.
UNTHROTTLED = ("--wrong-token-rate", "100000")


class RelayProcess:
    """``llamacpp-adapter relay`` running in its own process; what it wrote to stderr."""

    def __init__(self, process: subprocess.Popen[bytes], port: int) -> None:
        self.process = process
        self.port = port
        self.stderr: list[str] = []
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr.append(line.decode(errors="replace"))

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def finished(self) -> None:
        """The process has ended: its stderr is read to the end."""
        self._reader.join()

    def alive(self) -> bool:
        return self.process.poll() is None

    def descriptors(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def output(self) -> str:
        return "".join(self.stderr)


@contextmanager
def relay_command(
    engine: LocalLlamaServer, *options: str, max_descriptors: int | None = None
) -> Iterator[RelayProcess]:
    command = [sys.executable, "-m", "llamacpp_adapter", "relay", "--url", engine.base_url]
    if max_descriptors is not None:
        command = ["prlimit", f"--nofile={max_descriptors}:{max_descriptors}", *command]
    command += ["--port", "0", "--allow-extra", *options]
    process = subprocess.Popen(
        command,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "LLAMACPP_ADAPTER_RELAY_TOKEN": TOKEN},
    )
    with process:
        try:
            assert process.stderr is not None
            line = process.stderr.readline().decode()
            assert line.startswith("-- relay listening on ws://127.0.0.1:"), line
            relay = RelayProcess(process, int(line.rsplit(":", 1)[1]))
            try:
                yield relay
            finally:
                stop(process)
                relay.finished()
        finally:
            stop(process)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def open_websocket(port: int) -> tuple[trio.SocketStream, WSConnection]:
    return await open_raw_websocket(port, TOKEN)


# --- The hostile clients ---------------------------------------------------------------


async def wrong_token_then_fin(relay: RelayProcess) -> None:
    stream = await connect(relay.port)
    await stream.send_all(handshake(relay.port, "wrong-token-0000000000"))
    await stream.aclose()


async def wrong_token_then_rst(relay: RelayProcess) -> None:
    stream = await connect(relay.port)
    await stream.send_all(handshake(relay.port, None))
    reset_on_close(stream)
    await stream.aclose()


async def rejected_clients_that_stay(relay: RelayProcess, count: int = 20) -> None:
    """Clients refused with 401 that keep their sockets open: the relay closes each."""
    streams: list[trio.SocketStream] = []
    try:
        for _ in range(count):
            stream = await connect(relay.port)
            streams.append(stream)
            await stream.send_all(handshake(relay.port, "wrong-token-0000000000"))
            with trio.fail_after(CLOSE_WITHIN_S):
                answer = await stream.receive_some(65536)
            assert answer.startswith(b"HTTP/1.1 401 "), answer[:80]
        for stream in streams:
            await read_to_eof(stream, CLOSE_WITHIN_S)
    finally:
        for stream in streams:
            await stream.aclose()


async def gone_mid_stream(relay: RelayProcess) -> None:
    stream, protocol = await open_websocket(relay.port)
    task = {"prompt": "gone", "max_tokens": 20000, "extra": {"ignore_eos": True}}
    await stream.send_all(protocol.send(TextMessage(data=json.dumps(task))))
    await stream.receive_some(65536)  # the stream runs
    reset_on_close(stream)
    await stream.aclose()


async def deeply_nested_task(relay: RelayProcess) -> None:
    stream, protocol = await open_websocket(relay.port)
    task = '{"prompt": ' + "[" * 20000 + "]" * 20000 + "}"
    await stream.send_all(protocol.send(TextMessage(data=task)))
    events = await events_to_eof(stream, protocol)
    messages = [json.loads(e.data) for e in events if hasattr(e, "data")]
    assert [m["code"] for m in messages] == ["BAD_TASK"], messages
    assert closes(events)[0][0] == 1008
    await stream.aclose()


async def invalid_utf8_frame(relay: RelayProcess) -> None:
    stream, protocol = await open_websocket(relay.port)
    await stream.send_all(frame(0x1, b"\xff\xfe"))
    events = await events_to_eof(stream, protocol)
    assert closes(events)[0][0] == 1007
    await stream.aclose()


async def a_client_that_never_reads(relay: RelayProcess) -> None:
    """Starts a long stream, reads nothing for a while, and resets the connection."""
    stream, protocol = await open_websocket(relay.port)
    task = {"prompt": "stall", "max_tokens": 60000, "extra": {"ignore_eos": True}}
    await stream.send_all(protocol.send(TextMessage(data=json.dumps(task))))
    await trio.sleep(1.5)  # longer than the relay's idle limit (1 s)
    reset_on_close(stream)
    await stream.aclose()


HOSTILE: list[Callable[[RelayProcess], Awaitable[None]]] = [
    wrong_token_then_fin,
    wrong_token_then_rst,
    rejected_clients_that_stay,
    gone_mid_stream,
    deeply_nested_task,
    invalid_utf8_frame,
    a_client_that_never_reads,
]


async def correct_stream(relay: RelayProcess, n: int) -> None:
    request = TaskRequest(f"correct {n}", max_tokens=300, seed=n, extra={"ignore_eos": True})
    async with open_relay_stream(relay.url, request, token=TOKEN) as events:
        got = [event async for event in events]
    assert isinstance(got[-1], End), got[-1]
    assert got[-1].tokens_out == 300
    indices = [e.i for e in got if isinstance(e, Token)]
    assert indices == list(range(len(indices)))


async def settled_descriptors(relay: RelayProcess, baseline: int) -> int:
    deadline = time.monotonic() + CLOSE_WITHIN_S
    while relay.descriptors() > baseline and time.monotonic() < deadline:  # noqa: ASYNC110
        await trio.sleep(0.05)  # another process: nothing to wait on but its count
    return relay.descriptors()


# --- Tests ---------------------------------------------------------------------------


@pytest.mark.parametrize("client", [wrong_token_then_fin, wrong_token_then_rst])
async def test_a_refused_client_that_hangs_up_at_once_does_not_stop_the_relay(
    llama_server: LocalLlamaServer, client: Callable[[RelayProcess], Awaitable[None]]
) -> None:
    with relay_command(llama_server, "--idle-timeout", "1") as relay:
        for _ in range(8):
            await client(relay)
        await correct_stream(relay, 0)
        assert relay.alive(), relay.output()
        assert "Traceback" not in relay.output()


async def test_a_client_over_the_limit_that_hangs_up_at_once_does_not_stop_the_relay(
    llama_server: LocalLlamaServer,
) -> None:
    with relay_command(llama_server, "--max-connections", "1") as relay:
        baseline = relay.descriptors()
        await correct_stream(relay, 0)
        assert await settled_descriptors(relay, baseline) == baseline
        held, _ = await open_websocket(relay.port)  # the one connection, with no task
        for rst in (False, True) * 4:
            stream = await connect(relay.port)
            await stream.send_all(handshake(relay.port, TOKEN))
            if rst:
                reset_on_close(stream)
            await stream.aclose()
        await held.aclose()
        assert await settled_descriptors(relay, baseline) == baseline
        await correct_stream(relay, 1)
        assert relay.alive(), relay.output()
        assert "Traceback" not in relay.output()


async def test_a_refused_connection_is_closed_after_its_answer(
    llama_server: LocalLlamaServer,
) -> None:
    with relay_command(llama_server, *UNTHROTTLED) as relay:
        baseline = relay.descriptors()
        await rejected_clients_that_stay(relay, count=100)
        assert await settled_descriptors(relay, baseline) == baseline
        assert relay.alive(), relay.output()


async def test_under_a_descriptor_limit_refused_clients_leave_room_for_a_correct_one(
    llama_server: LocalLlamaServer,
) -> None:
    # 80 connections that never finish their handshake, under a limit of 64 descriptors.
    with relay_command(llama_server, max_descriptors=64) as relay:
        streams = [await connect(relay.port) for _ in range(80)]
        try:
            for stream in streams:
                await stream.send_all(b"GET / HTTP/1.1\r\n")  # and nothing more
            await correct_stream(relay, 0)
        finally:
            for stream in streams:
                await stream.aclose()
        assert relay.alive(), relay.output()
        assert relay.output().count("\n") < 10, relay.output()[-2000:]


async def test_the_relay_survives_every_hostile_client_while_a_correct_one_streams(
    llama_server: LocalLlamaServer,
) -> None:
    with relay_command(llama_server, "--idle-timeout", "1", *UNTHROTTLED) as relay:
        baseline = relay.descriptors()
        done = False
        streamed = 0

        async def correct_client() -> None:
            nonlocal streamed
            while not done:
                streamed += 1
                await correct_stream(relay, streamed)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(correct_client)
            for _ in range(3):
                for hostile in HOSTILE:
                    await hostile(relay)
            done = True
        assert streamed >= 3
        assert relay.alive(), relay.output()
        assert "Traceback" not in relay.output(), relay.output()[-3000:]
        assert await settled_descriptors(relay, baseline) == baseline


# --- Wrong tokens, many and at once -------------------------------------------------

#: The relay's default throttle: wrong tokens answered at once, then a second.
BURST, PER_SECOND, MAX_WAIT_S = 10, 2.0, 5.0
#: The longest a correct client's tokens may be held up while others attack.
TOKEN_GAP_BOUND_S = 0.25
#: What a thousand refused connections may add to the relay's resident memory.
MEMORY_BOUND_BYTES = 4 * 1024 * 1024


def resident_bytes(relay: RelayProcess) -> int:
    with open(f"/proc/{relay.process.pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def timed_stream(relay: RelayProcess, tokens: int) -> list[float]:
    """A correct client's stream: the time each of its tokens arrived."""
    request = TaskRequest("timed", max_tokens=tokens, seed=1, extra={"ignore_eos": True})
    times = []
    async with open_relay_stream(relay.url, request, token=TOKEN) as events:
        async for event in events:
            if isinstance(event, Token):
                times.append(trio.current_time())
            elif isinstance(event, End):
                assert event.tokens_out == tokens
    return times


async def wrong_token(relay: RelayProcess) -> bytes:
    """One wrong token: what the relay answered before it closed the connection."""
    stream = await connect(relay.port)
    try:
        await stream.send_all(handshake(relay.port, "wrong-token-0000000000"))
        return await read_to_eof(stream, MAX_WAIT_S + CLOSE_WITHIN_S)
    finally:
        await stream.aclose()


async def test_a_thousand_wrong_tokens_are_slowed_and_hold_up_no_one(
    llama_server: LocalLlamaServer,
) -> None:
    """A thousand wrong tokens from one address, fifty at a time: the first ten are
    answered at once, then two a second; the rest are closed unanswered, none left
    open past the throttle's bound. Meanwhile a correct client's tokens are never
    held up past the bound, and the relay keeps no descriptor and little memory."""
    with relay_command(llama_server) as relay:
        await correct_stream(relay, 0)  # warm: the first stream's allocations
        baseline = relay.descriptors()
        memory = resident_bytes(relay)
        answers: list[bytes] = []
        gaps: list[float] = []

        async def attacker() -> None:
            limiter = trio.CapacityLimiter(50)

            async def one() -> None:
                async with limiter:
                    answers.append(await wrong_token(relay))

            async with trio.open_nursery() as attack:
                for _ in range(1000):
                    attack.start_soon(one)

        async def correct_client() -> None:
            while len(answers) < 1000:
                times = await timed_stream(relay, 100)
                gaps.extend(b - a for a, b in itertools.pairwise(times))

        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(attacker)
            nursery.start_soon(correct_client)
        elapsed = trio.current_time() - start

        answered = [a for a in answers if a]
        assert all(a.startswith(b"HTTP/1.1 401 ") for a in answered), answered[:1]
        assert BURST <= len(answered) <= BURST + PER_SECOND * elapsed + 1, (len(answered), elapsed)
        assert len(answers) == 1000
        assert max(gaps) <= TOKEN_GAP_BOUND_S, sorted(gaps)[-5:]
        assert await settled_descriptors(relay, baseline) <= baseline
        assert resident_bytes(relay) - memory <= MEMORY_BOUND_BYTES
        await correct_stream(relay, 1)
        assert relay.alive(), relay.output()
        assert "Traceback" not in relay.output(), relay.output()[-3000:]
