"""AdapterHost against stub replicas: retries only before the first token, Retry-After,
the retry deadline, fail-fast PoolUnavailable, and the metrics it counts. Time is Trio's
MockClock where a test waits."""

from __future__ import annotations

import itertools
import json
import logging
import random
import socket
from typing import Any

import anyio
import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from trio.testing import MockClock

from llamacpp_adapter import (
    AdapterError,
    AdapterHost,
    ChatRequest,
    End,
    GiveUp,
    JobCancelled,
    LlamaCppHttpAdapter,
    Metrics,
    PoolUnavailable,
    Reasoning,
    RetryDecision,
    RetryLater,
    RetryPolicy,
    Started,
    StreamEvent,
    TaskRequest,
    Token,
    ToolCall,
    WorkerError,
    WorkerReset,
)

from ..support.scripted import Connection, Script, replica, start_server, stream_tokens
from ..support.wire import (
    BUSY,
    GOLDEN,
    LAST_CHUNK,
    LOADING,
    SLOTS,
    STREAM_HEAD,
    busy_slots,
    chunked,
    json_response,
    token_event,
)

# One of the captured server's two slots busy with another client's task.
ONE_SLOT_BUSY = busy_slots(0)


class Engine:
    """A scripted replica: each /completion is answered by the next step of *script*,
    the last step repeating; the time of each is recorded."""

    def __init__(self, *steps: Script) -> None:
        self.steps = list(steps)
        self.times: list[float] = []

    async def __call__(self, connection: Connection) -> None:
        self.times.append(trio.current_time())
        step = self.steps[min(len(self.times), len(self.steps)) - 1]
        await step(connection)


def answer(status: int, reason: str, body: object, headers: str = "") -> Script:
    async def handle(connection: Connection) -> None:
        await connection.send(json_response(status, reason, body, headers))

    return handle


def tokens(count: int) -> Script:
    async def handle(connection: Connection) -> None:
        await stream_tokens(connection, count)

    return handle


async def first_token_then_nothing(connection: Connection) -> None:
    """A stream that sends its first token and then nothing, until it is closed."""
    await connection.send(STREAM_HEAD + chunked(token_event(1)))
    await trio.sleep_forever()


def cut_after(count: int) -> Script:
    """Headers and *count* tokens, then the connection closes mid-stream."""

    async def handle(connection: Connection) -> None:
        body = b"".join(token_event(n) for n in range(1, count + 1))
        await connection.send(STREAM_HEAD + (chunked(body) if body else b""))

    return handle


async def add_replica(
    nursery: trio.Nursery, host: AdapterHost, name: str, engine: Engine, *, slots: bytes = SLOTS
) -> LlamaCppHttpAdapter:
    url = await start_server(nursery, replica(engine, slots=slots))
    adapter = LlamaCppHttpAdapter(url)
    host.bind("pool", name, adapter, _owned=True)  # the host closes it
    return adapter


async def run_task(host: AdapterHost, request: TaskRequest | None = None) -> list[StreamEvent]:
    async with host.submit("pool", request or TaskRequest("x")) as events:
        return [event async for event in events]


def host_for_test(**options: object) -> AdapterHost:
    options.setdefault("refresh_interval_s", 3600.0)
    return AdapterHost(rng=random.Random(7), **options)  # type: ignore[arg-type]


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- Retries before the first token only -------------------------------------------------


async def test_429_is_retried_after_its_retry_after(
    nursery: trio.Nursery, mock_clock: MockClock
) -> None:
    mock_clock.autojump_threshold = 0
    engine = Engine(answer(429, "Too Many Requests", BUSY, "Retry-After: 3\r\n"), tokens(4))
    async with host_for_test() as host:
        await add_replica(nursery, host, "r0", engine)
        events = await run_task(host)
    assert [type(e) for e in events] == [Started, *[Token] * 4, Metrics, End]
    assert len(engine.times) == 2
    assert engine.times[1] - engine.times[0] >= 3  # the header was honoured


async def test_503_loading_goes_to_another_replica(
    nursery: trio.Nursery, mock_clock: MockClock
) -> None:
    mock_clock.autojump_threshold = 0
    loading = Engine(answer(503, "Service Unavailable", LOADING))
    ready = Engine(tokens(3))
    async with host_for_test() as host:
        await add_replica(nursery, host, "loading", loading)
        # One slot of this one is busy elsewhere, so the loading replica is tried first.
        await add_replica(nursery, host, "ready", ready, slots=ONE_SLOT_BUSY)
        async with host.submit("pool", TaskRequest("x")) as stream:
            events = [event async for event in stream]
        assert (stream.replica, stream.attempts) == ("ready", 2)
    assert [e.i for e in events if isinstance(e, Token)] == [0, 1, 2]
    assert (len(loading.times), len(ready.times)) == (1, 1)


async def test_a_failure_before_the_first_token_is_retried_unseen(
    nursery: trio.Nursery, mock_clock: MockClock
) -> None:
    mock_clock.autojump_threshold = 0
    engine = Engine(cut_after(0), tokens(3))
    async with host_for_test() as host:
        await add_replica(nursery, host, "r0", engine)
        events = await run_task(host)
    # One Started, then the second attempt's tokens from 0: the first is not seen.
    assert [type(e) for e in events] == [Started, Token, Token, Token, Metrics, End]
    assert [e.i for e in events if isinstance(e, Token)] == [0, 1, 2]
    assert len(engine.times) == 2


class FixedDelays(RetryPolicy):
    """A policy of its own: a retriable failure waits one fixed delay, at most twice."""

    def decide(self, error: WorkerError, **context: Any) -> RetryDecision:
        if error.retriable and context["attempts"] < 3:
            return RetryLater(1.5)
        return GiveUp(error)


async def test_the_host_does_what_its_policy_decides(
    nursery: trio.Nursery, mock_clock: MockClock
) -> None:
    mock_clock.autojump_threshold = 0
    engine = Engine(cut_after(0))
    async with host_for_test(retry=FixedDelays(), unhealthy_after=10) as host:
        await add_replica(nursery, host, "r0", engine)
        with pytest.raises(WorkerReset):
            await run_task(host)
    assert len(engine.times) == 3
    assert [b - a for a, b in itertools.pairwise(engine.times)] == pytest.approx([1.5, 1.5])


async def test_nothing_is_retried_after_the_first_token(
    nursery: trio.Nursery, mock_clock: MockClock
) -> None:
    mock_clock.autojump_threshold = 0
    first = Engine(cut_after(2))
    other = Engine(tokens(3))
    async with host_for_test() as host:
        await add_replica(nursery, host, "first", first)
        await add_replica(nursery, host, "other", other, slots=ONE_SLOT_BUSY)
        got: list[StreamEvent] = []
        with pytest.raises(WorkerReset):
            async with host.submit("pool", TaskRequest("x")) as events:
                async for event in events:
                    got.append(event)
    assert [e.i for e in got if isinstance(e, Token)] == [0, 1]
    assert other.times == []


CHAT_EVENTS = (GOLDEN / "chat_tool_call.sse").read_bytes().split(b"\n\n")


def chat_cut_after(count: int) -> Script:
    """The captured chat stream's head and first *count* events, then the connection
    closes mid-stream (or, with every event, the body ends as it should)."""

    async def handle(connection: Connection) -> None:
        assert connection.path == "/v1/chat/completions"
        body = b"".join(event + b"\n\n" for event in CHAT_EVENTS[:count] if event)
        end = LAST_CHUNK if count >= len(CHAT_EVENTS) else b""
        await connection.send(STREAM_HEAD + (chunked(body) if body else b"") + end)

    return handle


@pytest.mark.parametrize("events", [2, 9], ids=["after-reasoning", "after-the-call"])
async def test_nothing_of_a_chat_is_retried_after_its_first_output(
    nursery: trio.Nursery, mock_clock: MockClock, events: int
) -> None:
    # Its first output is a reasoning delta, not a token: a retry would give it twice.
    mock_clock.autojump_threshold = 0
    first = Engine(chat_cut_after(events))
    other = Engine(chat_cut_after(len(CHAT_EVENTS)))
    async with host_for_test() as host:
        await add_replica(nursery, host, "first", first)
        await add_replica(nursery, host, "other", other, slots=ONE_SLOT_BUSY)
        got: list[StreamEvent] = []
        with pytest.raises(WorkerReset):
            async with host.submit("pool", ChatRequest([{"role": "user", "content": "x"}])) as s:
                async for event in s:
                    got.append(event)
    assert isinstance(got[1], Reasoning)
    assert other.times == []


async def test_a_chat_that_fails_before_its_first_output_is_retried_unseen(
    nursery: trio.Nursery, mock_clock: MockClock
) -> None:
    mock_clock.autojump_threshold = 0
    first = Engine(chat_cut_after(1))  # the role's delta alone: no output yet
    other = Engine(chat_cut_after(len(CHAT_EVENTS)))
    async with host_for_test() as host:
        await add_replica(nursery, host, "first", first)
        await add_replica(nursery, host, "other", other, slots=ONE_SLOT_BUSY)
        async with host.submit("pool", ChatRequest([{"role": "user", "content": "x"}])) as s:
            got = [event async for event in s]
    assert [type(e) for e in got[-3:]] == [ToolCall, Metrics, End]
    assert len(other.times) == 1


async def test_a_conversation_s_turns_go_where_its_last_turn_ran(nursery: trio.Nursery) -> None:
    engines = {"r0": Engine(tokens(2)), "r1": Engine(tokens(2))}
    async with host_for_test() as host:
        for name, engine in engines.items():
            adapter = await add_replica(nursery, host, name, engine)
        await host.wait_ready("pool")
        served = []
        for _turn in range(6):
            async with host.submit("pool", TaskRequest("x", session="conversation")) as events:
                async for _ in events:
                    pass
                served.append(events.replica)
            # Another task, with no conversation, in between: it may go anywhere.
            await run_task(host)
        assert len(set(served)) == 1, served
        statuses = {status.replica: status for status in host.replicas("pool")}
        assert [
            statuses[name].sessions for name in (served[0], "r1" if served[0] == "r0" else "r0")
        ] == [1, 0]
        assert statuses[served[0]].prompt_tokens > 0
        # Its replica goes away: the next turn goes to the other, with no error.
        adapter = host.unbind("pool", served[0])
        await adapter.aclose()
        async with host.submit("pool", TaskRequest("x", session="conversation")) as events:
            got = [event async for event in events]
            assert events.replica != served[0]
    assert isinstance(got[-1], End)


async def test_retries_stop_at_the_deadline(nursery: trio.Nursery, mock_clock: MockClock) -> None:
    mock_clock.autojump_threshold = 0
    engine = Engine(answer(503, "Service Unavailable", LOADING, "Retry-After: 1\r\n"))
    policy = RetryPolicy(deadline_s=5.0, max_attempts=100)
    async with host_for_test(retry=policy, unhealthy_after=1000) as host:
        await add_replica(nursery, host, "r0", engine)
        start = trio.current_time()
        with pytest.raises(AdapterError) as info:
            await run_task(host)
        ended = trio.current_time()
    assert info.value.status == 503
    assert len(engine.times) >= 3
    assert all(t - start < 5.0 for t in engine.times)  # no attempt after the deadline
    assert ended - start <= 5.0
    gaps = [b - a for a, b in zip(engine.times, engine.times[1:], strict=False)]
    assert min(gaps) >= 1.0  # Retry-After: 1, each time


async def test_a_replica_that_keeps_failing_is_probed_before_it_gets_work(
    nursery: trio.Nursery, mock_clock: MockClock
) -> None:
    mock_clock.autojump_threshold = 0
    engine = Engine(cut_after(0), cut_after(0), tokens(2))
    async with host_for_test(unhealthy_after=2, probe_interval_s=10.0) as host:
        await add_replica(nursery, host, "r0", engine)
        # Two failures in a row: unhealthy; the task has no replica left.
        with pytest.raises(PoolUnavailable):
            await run_task(host)
        assert [r.healthy for r in host.replicas("pool")] == [False]
        assert len(engine.times) == 2
        # The probe (its /health answers ok) brings it back.
        await trio.sleep(10.5)
        assert [r.healthy for r in host.replicas("pool")] == [True]
        events = await run_task(host)
    assert [type(e) for e in events] == [Started, Token, Token, Metrics, End]


# --- PoolUnavailable, at once ------------------------------------------------------------

#: What the host would spend waiting, were it to queue a task it cannot place: its slot
#: wait and its retry deadline. The tests run on a MockClock that jumps ahead whenever
#: every task waits, so a wait of either shows as that much time, and "at once" is none.
QUEUEING_WOULD_TAKE_S = 30.0


def fail_fast_host() -> AdapterHost:
    return host_for_test(
        slot_wait_s=QUEUEING_WOULD_TAKE_S, retry=RetryPolicy(deadline_s=QUEUEING_WOULD_TAKE_S)
    )


async def assert_fast_pool_unavailable(
    host: AdapterHost, request: TaskRequest, match: str, clock: MockClock
) -> None:
    clock.autojump_threshold = 0
    start = trio.current_time()
    with pytest.raises(PoolUnavailable, match=match):
        await run_task(host, request)
    assert trio.current_time() - start < QUEUEING_WOULD_TAKE_S / 10


async def test_pool_unavailable_when_nothing_is_bound(mock_clock: MockClock) -> None:
    async with fail_fast_host() as host:
        await assert_fast_pool_unavailable(
            host, TaskRequest("x"), "no replica is bound", mock_clock
        )


async def test_pool_unavailable_when_every_replica_is_unhealthy(mock_clock: MockClock) -> None:
    async with fail_fast_host() as host:
        for name in ("r0", "r1"):  # nothing listens there: refused at once
            host.bind("pool", name, LlamaCppHttpAdapter(f"http://127.0.0.1:{unused_port()}"))
        await assert_fast_pool_unavailable(host, TaskRequest("x"), "unhealthy", mock_clock)
        for name in ("r0", "r1"):
            await host.unbind("pool", name).aclose()


async def test_pool_unavailable_when_the_task_exceeds_every_context(
    nursery: trio.Nursery, mock_clock: MockClock
) -> None:
    engine = Engine(tokens(1))
    async with fail_fast_host() as host:
        await add_replica(nursery, host, "r0", engine)
        await add_replica(nursery, host, "r1", engine)
        # The captured server's slots hold 256 tokens; this prompt is 300 token ids.
        big = TaskRequest(list(range(1, 301)))
        await assert_fast_pool_unavailable(host, big, "larger than the context", mock_clock)
    assert engine.times == []  # decided without asking the engine


@pytest.mark.parametrize("slot_wait_s", [2.0, 0.0])
async def test_pool_unavailable_when_no_slot_frees_in_time(
    nursery: trio.Nursery, mock_clock: MockClock, slot_wait_s: float
) -> None:
    # slot_wait_s=0: a saturated pool fails at once, with not a moment of waiting.
    mock_clock.autojump_threshold = 0

    async with host_for_test(slot_wait_s=slot_wait_s) as host:
        await add_replica(nursery, host, "r0", Engine(first_token_then_nothing))
        async with host.submit("pool", TaskRequest("a")), host.submit("pool", TaskRequest("b")):
            assert host.replicas("pool")[0].free_slots == 0
            start = trio.current_time()
            with pytest.raises(PoolUnavailable, match="free slot"):
                await run_task(host)
            assert trio.current_time() - start == pytest.approx(slot_wait_s)


# --- Metrics ---------------------------------------------------------------------------


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(url).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    wanted = {"engine": "llama.cpp", "pool": "pool", **labels}
    return samples[(name, frozenset(wanted.items()))]


async def test_the_metrics_endpoint_serves_what_happened(nursery: trio.Nursery) -> None:
    flaky = Engine(
        answer(503, "Service Unavailable", LOADING), tokens(5), tokens(5), first_token_then_nothing
    )
    async with host_for_test(retry=RetryPolicy(initial_backoff_s=0.0)) as host:
        await add_replica(nursery, host, "r0", flaky)
        url = host.metrics.serve()
        assert url.startswith("http://127.0.0.1:")
        await run_task(host)  # one 503, then 5 tokens
        await run_task(host)  # 5 more
        async with host.submit("pool", TaskRequest("x")) as events:
            async for event in events:
                if isinstance(event, Token):
                    break  # left while the stream runs: cancelled
        samples = await trio.to_thread.run_sync(scrape, url)
    r0 = {"replica": "r0"}
    assert sample(samples, "llamacpp_adapter_requests_total", outcome="ok", **r0) == 2
    assert sample(samples, "llamacpp_adapter_requests_total", outcome="ADAPTER_ERROR", **r0) == 1
    assert sample(samples, "llamacpp_adapter_requests_total", outcome="cancelled", **r0) == 1
    assert sample(samples, "llamacpp_adapter_tokens_out_total", **r0) == 11
    assert sample(samples, "llamacpp_adapter_retries_total", reason="ADAPTER_ERROR", **r0) == 1
    assert sample(samples, "llamacpp_adapter_in_flight_streams", **r0) == 0
    assert sample(samples, "llamacpp_adapter_replica_healthy", **r0) == 1
    assert sample(samples, "llamacpp_adapter_time_to_first_token_seconds_count", **r0) == 3
    assert sample(samples, "llamacpp_adapter_token_latency_seconds_count", **r0) == 8


async def test_a_failure_past_the_first_token_and_a_cancel_are_counted_as_each_is(
    nursery: trio.Nursery,
) -> None:
    # Past its first token the host reads the replica's stream as it is: what ended it
    # is still the replica's outcome, and still counted against it or not.
    engine = Engine(cut_after(2), first_token_then_nothing)
    async with host_for_test() as host:
        await add_replica(nursery, host, "r0", engine)
        url = host.metrics.serve()
        with pytest.raises(WorkerReset):
            async with host.submit("pool", TaskRequest("x")) as events:
                async for _ in events:
                    pass
        async with host.submit("pool", TaskRequest("y")) as events:
            async for event in events:
                if isinstance(event, Token):
                    await events.aclose()  # the consumer closes it: cancelled
                    break
        samples = await trio.to_thread.run_sync(scrape, url)
        assert host.replicas("pool")[0].in_flight == 0
    r0 = {"replica": "r0"}
    assert sample(samples, "llamacpp_adapter_requests_total", outcome="WORKER_RESET", **r0) == 1
    assert sample(samples, "llamacpp_adapter_requests_total", outcome="cancelled", **r0) == 1
    assert sample(samples, "llamacpp_adapter_tokens_out_total", **r0) == 3
    assert sample(samples, "llamacpp_adapter_token_latency_seconds_count", **r0) == 1


# --- Binding -----------------------------------------------------------------------------

URL_VARIABLE = "ORCHD_LLAMACPP_URL"


def test_from_env_binds_one_adapter_with_defaults() -> None:
    host = AdapterHost.from_env({URL_VARIABLE: "http://127.0.0.1:8080"})
    [status] = host.replicas("default")
    assert (status.pool, status.replica) == ("default", "r0")


def test_from_env_reads_pool_replica_and_key() -> None:
    key = "sk-from-env-0123456789abcdef"
    env = {
        URL_VARIABLE: "http://10.0.0.5:8080",
        "ORCHD_LLAMACPP_POOL": "chat",
        "ORCHD_LLAMACPP_REPLICA": "gpu1",
        "ORCHD_LLAMACPP_API_KEY": key,
    }
    host = AdapterHost.from_env(env)
    assert [r.replica for r in host.replicas("chat")] == ["gpu1"]
    assert key not in repr(host)


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({}, "ORCHD_LLAMACPP_URL is not set"),
        ({URL_VARIABLE: "  "}, "ORCHD_LLAMACPP_URL is not set"),
        ({URL_VARIABLE: "ftp://host"}, "ORCHD_LLAMACPP_URL is malformed"),
        ({URL_VARIABLE: "http://"}, "ORCHD_LLAMACPP_URL is malformed"),
        ({URL_VARIABLE: "http://u:hunter2secret@host:1/?q=1"}, "ORCHD_LLAMACPP_URL is malformed"),
    ],
)
def test_from_env_rejects_a_missing_or_malformed_url(env: dict[str, str], match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        AdapterHost.from_env(env)
    assert "hunter2secret" not in str(info.value)


def test_bind_rejects_duplicates_and_bad_names() -> None:
    host = host_for_test()
    adapter = LlamaCppHttpAdapter("http://127.0.0.1:1")
    host.bind("p", "r", adapter)
    with pytest.raises(ValueError, match="already has"):
        host.bind("p", "r", adapter)
    with pytest.raises(ValueError, match="printable"):
        host.bind("", "r", adapter)
    with pytest.raises(TypeError):
        host.bind("p", "r2", "http://127.0.0.1:1")  # type: ignore[arg-type]
    with pytest.raises(KeyError):
        host.unbind("p", "nope")


async def test_submit_outside_the_block_is_an_error() -> None:
    host = host_for_test()
    with pytest.raises(RuntimeError, match="async with"):
        async with host.submit("pool", TaskRequest("x")):
            pass


# --- Secrets -----------------------------------------------------------------------------


async def test_no_secret_reaches_a_log_record(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    key, password = "sk-host-log-7d1e93b2c4", "pw-host-log-55a0f1"
    for name in ("llamacpp_adapter", "httpx", "httpcore"):
        caplog.set_level(logging.DEBUG, logger=name)
    engine = Engine(answer(503, "Service Unavailable", LOADING), cut_after(1))
    url = await start_server(nursery, replica(engine))
    with_password = url.replace("http://", f"http://user:{password}@")
    policy = RetryPolicy(initial_backoff_s=0.0)
    async with (
        host_for_test(retry=policy) as host,
        LlamaCppHttpAdapter(with_password, api_key=key) as adapter,
    ):
        host.bind("pool", "r0", adapter)
        with pytest.raises(WorkerReset):
            await run_task(host)
    assert {r.name.split(".")[0] for r in caplog.records} == {
        "llamacpp_adapter",
        "httpx",
        "httpcore",
    }
    for record in caplog.records:
        shown = record.getMessage() + repr(vars(record))
        assert key not in shown
        assert password not in shown


# --- What the host learns, and unbinding ---------------------------------------------------


async def test_slots_other_clients_take_are_read_again_from_slots(
    nursery: trio.Nursery, mock_clock: MockClock
) -> None:
    mock_clock.autojump_threshold = 0
    captured = json.loads(SLOTS)
    answers = {"slots": SLOTS}

    async def completion(connection: Connection) -> None:
        await stream_tokens(connection, 1)

    async def handle(connection: Connection) -> None:
        await replica(completion, slots=answers["slots"])(connection)

    url = await start_server(nursery, handle)
    async with (
        host_for_test(slot_wait_s=1.0, refresh_interval_s=5.0) as host,
        LlamaCppHttpAdapter(url) as adapter,
    ):
        host.bind("pool", "r0", adapter)
        await host.wait_ready("pool")
        assert host.replicas("pool")[0].free_slots == 2
        # Another client takes both slots; the next refresh sees it.
        answers["slots"] = json.dumps([dict(s, is_processing=True) for s in captured]).encode()
        await trio.sleep(5.5)
        assert host.replicas("pool")[0].free_slots == 0
        with pytest.raises(PoolUnavailable, match="free slot"):
            await run_task(host)
        answers["slots"] = SLOTS
        await trio.sleep(5.5)
        assert host.replicas("pool")[0].free_slots == 2
        assert len(await run_task(host)) == 4  # Started, Token, Metrics, End


async def test_an_unbound_replica_gets_no_new_work(
    nursery: trio.Nursery, mock_clock: MockClock
) -> None:
    kept, dropped = Engine(tokens(1)), Engine(tokens(1))
    async with host_for_test() as host:
        await add_replica(nursery, host, "kept", kept)
        adapter = await add_replica(nursery, host, "dropped", dropped)
        assert host.unbind("pool", "dropped") is adapter
        for _ in range(4):
            await run_task(host)
        assert (len(kept.times), len(dropped.times)) == (4, 0)
        await host.unbind("pool", "kept").aclose()
        await assert_fast_pool_unavailable(
            host, TaskRequest("x"), "no replica is bound", mock_clock
        )
        await adapter.aclose()


async def test_cancel_ends_the_job_on_its_replica_without_a_retry(nursery: trio.Nursery) -> None:
    engine = Engine(first_token_then_nothing)
    async with host_for_test() as host:
        await add_replica(nursery, host, "r0", engine)
        task = TaskRequest("x", job_id="job-7")
        got: list[StreamEvent] = []
        with pytest.raises(JobCancelled):
            async with host.submit("pool", task) as events:
                async for event in events:
                    got.append(event)
                    if isinstance(event, Token):
                        assert await host.cancel("job-7")
        assert not await host.cancel("job-7")
        assert [type(e) for e in got] == [Started, Token]
        assert len(engine.times) == 1
        assert host.replicas("pool")[0].in_flight == 0


# --- The receive interface -------------------------------------------------------------


async def test_a_host_stream_used_after_its_block_ends_or_says_closed_as_an_event_stream(
    nursery: trio.Nursery,
) -> None:
    async with host_for_test() as host:
        await add_replica(nursery, host, "r0", Engine(tokens(2)))
        async with host.submit("pool", TaskRequest("whole")) as whole:
            events = [event async for event in whole]
        async with host.submit("pool", TaskRequest("left")) as left:
            await left.receive()
    assert isinstance(events[-1], End)
    with pytest.raises(anyio.EndOfStream):  # it had ended: its end, as EventStream says
        await whole.receive()
    with pytest.raises(anyio.ClosedResourceError):  # it was left before its end
        await left.receive()
