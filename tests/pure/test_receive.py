"""The one receive state machine every stream shares, driven with a scripted source and
no socket: its states and their transitions, several readers, a close or a cancel from
outside the reading task, and batches."""

from __future__ import annotations

import anyio
import pytest
from trio.testing import wait_all_tasks_blocked

from llamacpp_adapter import EngineError, EventReceiveStream, Started, StreamEvent, Token
from llamacpp_adapter._exceptions import JobCancelled, WorkerError
from llamacpp_adapter._receive import TRANSITIONS, StreamState

pytestmark = pytest.mark.anyio


class Scripted(EventReceiveStream):
    """Reads come from *reads*, one list of events (or an error) a read; a read that
    finds none left waits until it is interrupted."""

    def __init__(self, *reads: list[StreamEvent] | Exception) -> None:
        self.job_id = "job"
        self.reads = list(reads)
        self.released: list[WorkerError | None] = []
        self.interrupted = anyio.Event()
        self._start([Started("job")])

    async def _read(self) -> list[StreamEvent]:
        await anyio.lowlevel.checkpoint()
        if not self.reads:
            await self.interrupted.wait()
            raise anyio.BrokenResourceError  # the source closed under the read
        read = self.reads.pop(0)
        if isinstance(read, Exception):
            raise read
        return read

    async def _interrupt_read(self) -> None:
        self.interrupted.set()

    async def _release(self, failure: WorkerError | None) -> None:
        self.released.append(failure)


def tokens(*numbers: int) -> list[StreamEvent]:
    return [Token(n, str(n)) for n in numbers]


async def take_all(stream: EventReceiveStream) -> list[StreamEvent]:
    return [event async for event in stream]


def test_every_state_is_in_the_table_and_the_ends_go_nowhere() -> None:
    assert set(TRANSITIONS) == set(StreamState)
    for end in (StreamState.ENDED, StreamState.FAILED, StreamState.CLOSED):
        assert TRANSITIONS[end] == frozenset()
    assert StreamState.READING in TRANSITIONS[StreamState.OPEN]


async def test_events_then_the_end() -> None:
    stream = Scripted(tokens(0, 1), tokens(2), [])
    assert stream.state is StreamState.OPEN
    assert await take_all(stream) == [Started("job"), *tokens(0, 1, 2)]
    assert stream.state is StreamState.ENDED
    assert stream.released == [None]
    with pytest.raises(anyio.EndOfStream):
        await stream.receive()
    await stream.aclose()  # after the end, nothing changes
    assert stream.state is StreamState.ENDED
    with pytest.raises(anyio.EndOfStream):
        stream.receive_nowait()


async def test_a_failure_comes_after_the_events_before_it_then_the_end() -> None:
    failure = EngineError("out of memory")
    stream = Scripted(tokens(0), failure)
    got: list[StreamEvent] = []
    with pytest.raises(EngineError):
        async for event in stream:
            got.append(event)
    assert got == [Started("job"), *tokens(0)]
    assert stream.state is StreamState.FAILED
    assert stream.released == [failure]
    with pytest.raises(anyio.EndOfStream):
        await stream.receive()


async def test_a_failure_not_ours_is_an_internal_error(caplog: pytest.LogCaptureFixture) -> None:
    stream = Scripted(KeyError("bug"))
    await stream.receive()  # Started
    with pytest.raises(WorkerError) as info:
        await stream.receive()
    assert info.value.code == "INTERNAL_ERROR"
    assert isinstance(info.value.__cause__, KeyError)
    assert "unexpected failure" in caplog.text


async def test_receive_nowait_takes_what_is_decoded_and_waits_for_nothing() -> None:
    stream = Scripted(tokens(0, 1), [])
    assert stream.buffered == 1
    assert stream.receive_nowait() == Started("job")
    with pytest.raises(anyio.WouldBlock):
        stream.receive_nowait()
    assert await stream.receive() == Token(0, "0")
    assert stream.buffered == 1
    assert stream.receive_nowait() == Token(1, "1")


async def test_a_batch_is_what_is_decoded_or_the_next_read() -> None:
    stream = Scripted(tokens(0, 1, 2), tokens(3), [])
    assert await stream.receive_batch() == [Started("job")]
    assert await stream.receive() == Token(0, "0")
    assert await stream.receive_batch() == tokens(1, 2)  # the rest of that read
    assert await stream.receive_batch() == tokens(3)
    assert await stream.receive_batch() == []
    assert stream.state is StreamState.ENDED


async def test_aclose_while_open_drops_what_waits_and_closes() -> None:
    stream = Scripted(tokens(0, 1))
    await stream.receive()
    await stream.receive()  # Token 0; Token 1 waits
    await stream.aclose()
    assert stream.state is StreamState.CLOSED
    assert stream.released == [None]
    for _ in range(2):
        with pytest.raises(anyio.ClosedResourceError):
            await stream.receive()
    with pytest.raises(anyio.ClosedResourceError):
        stream.receive_nowait()


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_aclose_while_another_task_reads_ends_that_read_as_closed() -> None:
    stream = Scripted()  # its first read waits for ever
    await stream.receive()
    outcome: list[BaseException] = []

    async def reader() -> None:
        try:
            await stream.receive()
        except Exception as exc:
            outcome.append(exc)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(reader)
        await wait_all_tasks_blocked()
        assert stream.state is StreamState.READING
        await stream.aclose()
    assert [type(e) for e in outcome] == [anyio.ClosedResourceError]
    assert stream.state is StreamState.CLOSED
    assert stream.released == [None]


async def test_a_cancel_while_open_comes_after_what_waits() -> None:
    stream = Scripted(tokens(0, 1))
    await stream.receive()
    await stream.receive()  # Token 0; Token 1 waits
    cancelled = JobCancelled("job 'job' was cancelled")
    await stream._interrupt(cancelled)
    assert stream.released == [cancelled]  # the source closed at once
    assert await stream.receive() == Token(1, "1")
    with pytest.raises(JobCancelled):
        await stream.receive()
    assert stream.state is StreamState.FAILED
    with pytest.raises(anyio.EndOfStream):
        await stream.receive()


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_readers_share_one_read_and_each_event_goes_to_one() -> None:
    stream = Scripted(tokens(0, 1, 2, 3), [])
    await stream.receive()
    got: list[StreamEvent] = []

    async def reader() -> None:
        async for event in stream:
            got.append(event)
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tasks:
        for _ in range(3):
            tasks.start_soon(reader)
    assert sorted(got, key=lambda e: e.i if isinstance(e, Token) else -1) == tokens(0, 1, 2, 3)
    assert stream.state is StreamState.ENDED


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_a_read_cancelled_in_its_task_leaves_the_stream_open() -> None:
    stream = Scripted()
    await stream.receive()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(stream.receive)
        await wait_all_tasks_blocked()
        assert stream.state is StreamState.READING
        tasks.cancel_scope.cancel()
    assert stream.state is StreamState.OPEN
    stream.reads.append(tokens(0))
    assert await stream.receive() == Token(0, "0")
