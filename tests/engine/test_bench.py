"""The serving benchmark from Python against a real llama-server: the closed and the
open loop, the client's tokens against the server's counter, ordered percentiles, a
prompts file, a run by duration."""

from __future__ import annotations

import json
import time
from pathlib import Path

import anyio
import pytest
import trio

from llamacpp_adapter import LlamaCppHttpAdapter
from llamacpp_adapter._local.server import LocalLlamaServer
from llamacpp_adapter.bench import BenchConfig, BenchResult, RequestRecord, run_bench
from llamacpp_adapter.bench._load import Load

LATENCIES = ("ttft", "tpot", "itl", "e2el")


def check_ordered(figures: dict[str, object]) -> None:
    for name in LATENCIES:
        p50, p90, p99 = (float(figures[f"p{p}_{name}_ms"]) for p in (50, 90, 99))  # type: ignore[arg-type]
        assert p50 <= p90 <= p99, name


@pytest.mark.parametrize(
    "load", [Load(concurrency=2), Load(rate=40.0, concurrency=2, seed=5)], ids=["closed", "open"]
)
def test_a_run_counts_the_tokens_the_server_predicted(
    llama_server: LocalLlamaServer, load: Load
) -> None:
    config = BenchConfig(
        (llama_server.base_url,),
        load,
        requests=12,
        warmup=0,
        input_tokens=(8, 40),
        output_tokens=24,
    )
    result: BenchResult = trio.run(run_bench, config)
    figures = result.as_json()
    assert figures["completed"] == 12
    assert figures["failed"] == 0
    assert figures["total_output_tokens"] == 12 * 24
    # The client's count is the growth of the server's own counter over the run.
    assert result.token_check == {"client_tokens": 288, "server_tokens": 288, "equal": True}
    assert 8 * 12 <= figures["total_input_tokens"] <= 40 * 12
    check_ordered(figures)
    assert result.client["cpu_seconds_per_1k_tokens"] > 0
    assert not result.partial
    # Where the first token's time went: the engine's prompt, and the rest.
    for record in result.records:
        assert record.prompt_ms is not None
        assert record.first_token is not None
        assert 0 < record.prompt_ms <= (record.first_token - record.sent) * 1000
    assert figures["mean_wait_ms"] + figures["mean_prompt_ms"] == pytest.approx(
        figures["mean_ttft_ms"]
    )


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_a_chat_run_counts_the_tokens_the_server_predicted_and_its_template_s(
    llama_server: LocalLlamaServer, backend: str
) -> None:
    config = BenchConfig(
        (llama_server.base_url,), Load(concurrency=2), requests=6, warmup=1,
        input_tokens=(8, 16), output_tokens=12, endpoint="chat",
    )  # fmt: skip
    result: BenchResult = anyio.run(run_bench, config, backend=backend)
    figures = result.as_json()
    assert (figures["completed"], figures["failed"]) == (6, 0)
    assert figures["total_output_tokens"] == 6 * 12
    assert result.token_check == {"client_tokens": 72, "server_tokens": 72, "equal": True}
    # The server's count of each turn: the chat template's tokens and the turn's own.
    assert all(r.input_tokens > 8 for r in result.records)
    check_ordered(figures)


def test_an_endpoint_it_does_not_know_is_refused() -> None:
    with pytest.raises(ValueError, match="endpoint"):
        BenchConfig(("http://x",), Load(concurrency=1), endpoint="embeddings")


def test_a_prompts_file_is_read_and_counted(llama_server: LocalLlamaServer, tmp_path: Path) -> None:
    path = tmp_path / "prompts.jsonl"
    lines = [{"prompt": "once upon a time"}, {"prompt": "the end", "max_tokens": 3}]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    config = BenchConfig(
        (llama_server.base_url,), Load(concurrency=1), requests=4, warmup=0,
        output_tokens=5, prompts_file=path,
    )  # fmt: skip
    result: BenchResult = trio.run(run_bench, config)
    assert [r.output_tokens for r in result.records] == [5, 3, 5, 3]
    assert result.token_check["equal"]


def test_a_run_by_duration_from_the_public_module(llama_server: LocalLlamaServer) -> None:
    from llamacpp_adapter.bench import BenchConfig as PublicConfig
    from llamacpp_adapter.bench import Load as PublicLoad
    from llamacpp_adapter.bench import run_bench as public_run

    config = PublicConfig(
        (llama_server.base_url,), PublicLoad(concurrency=2), requests=None, duration_s=1.0,
        warmup=0, output_tokens=8,
    )  # fmt: skip
    result = trio.run(public_run, config)
    # It stopped at its duration (one that ran on would send 100,000 requests): the run's
    # own figure, a second and the end of the requests open then, however busy the machine.
    assert result.figures["duration"] < 2 * config.duration_s + 5
    assert result.figures["completed"] > 2
    assert not result.partial
    assert result.figures["total_output_tokens"] == 8 * result.figures["completed"]
    # The requests open when the duration ended are not counted, the server's tokens of
    # them are: the check cannot say, and there is no warning that it differs.
    assert result.token_check["equal"] is None
    assert not result.warnings


# --- Conversations -----------------------------------------------------------------------


async def prompt_counters(urls: tuple[str, ...]) -> tuple[float, float]:
    """The servers' counts of prompt tokens evaluated and taken from cache."""
    evaluated = cached = 0.0
    for url in urls:
        async with LlamaCppHttpAdapter(url) as adapter:
            metrics = await adapter.metrics()
        evaluated += metrics["llamacpp:prompt_tokens_total"]
        cached += metrics["llamacpp:prompt_tokens_cached_total"]
    return evaluated, cached


def expected_shares(result: BenchResult) -> dict[int, float]:
    """Each later turn's share of prompt tokens that are its conversations' last turns'
    prompts, which the engine has in cache where those ran. (Their answers too, unless
    the text of an answer tokenizes otherwise than the model generated it, as the tiny
    random model's do.)"""
    by_turn: dict[int, list[RequestRecord]] = {}
    for record in result.records:
        assert record.turn is not None
        by_turn.setdefault(record.turn, []).append(record)
    return {
        turn: sum(r.input_tokens for r in by_turn[turn - 1]) / sum(r.input_tokens for r in records)
        for turn, records in by_turn.items()
        if turn > 1
    }


def run_checked(config: BenchConfig) -> BenchResult:
    before = trio.run(prompt_counters, config.urls)
    result: BenchResult = trio.run(run_bench, config)
    after = trio.run(prompt_counters, config.urls)
    # Every prompt token the client counted, the servers evaluated or took from cache.
    cached = sum(r.cached_tokens or 0 for r in result.records)
    total = sum(r.input_tokens for r in result.records)
    assert (after[0] - before[0], after[1] - before[1]) == (total - cached, cached)
    assert result.token_check["equal"] is True
    return result


def test_conversations_turn_after_turn_reuse_the_cache_the_server_counts(
    llama_server: LocalLlamaServer,
) -> None:
    config = BenchConfig(
        (llama_server.base_url,),
        Load(concurrency=2),
        requests=4,
        warmup=0,
        output_tokens=8,
        turns=3,
        turn_tokens=40,
    )
    result = run_checked(config)
    assert result.figures["completed"] == 12
    assert result.turns is not None
    assert [(row["turn"], row["requests"]) for row in result.turns] == [(1, 4), (2, 4), (3, 4)]
    for turn, share in expected_shares(result).items():
        assert result.turns[turn - 1]["cached_share"] >= 0.9 * share, turn


def test_a_file_s_conversations_through_the_chat_endpoint(
    llama_server: LocalLlamaServer, tmp_path: Path
) -> None:
    path = tmp_path / "sharegpt.json"
    path.write_text(
        json.dumps(
            [
                {
                    "conversations": [
                        {"from": "human", "value": "Tell me a story about a fox."},
                        {"from": "gpt", "value": "(the file's answer: the model gives its own)"},
                        {"from": "human", "value": "And what did the dog do?"},
                    ]
                }
            ]
        )
    )
    config = BenchConfig(
        (llama_server.base_url,),
        Load(concurrency=2),
        requests=2,
        warmup=0,
        output_tokens=6,
        conversations_file=path,
        endpoint="chat",
    )
    result = run_checked(config)
    assert result.figures["completed"] == 4
    assert result.turns is not None
    # The second turn holds the first, its answer and the template: more tokens.
    first, second = result.turns
    assert second["requests"] == 2
    assert [r.input_tokens for r in result.records if r.turn == 2] > [0, 0]
    assert second["cached_share"] > first["cached_share"]


def test_a_pool_keeps_each_conversation_where_its_cache_is(
    llama_server: LocalLlamaServer,
) -> None:
    with LocalLlamaServer(context=8192, parallel=2) as other:
        config = BenchConfig(
            (llama_server.base_url, other.base_url),
            # One conversation at a time: placed blind (by free slots, both idle), a turn
            # would go to either replica at random.
            Load(concurrency=1),
            requests=4,
            warmup=0,
            output_tokens=8,
            turns=4,
            turn_tokens=60,
        )
        result = run_checked(config)
    assert result.figures["completed"] == 16
    assert result.turns is not None
    for turn, share in expected_shares(result).items():
        assert result.turns[turn - 1]["cached_share"] >= 0.9 * share, turn


@pytest.mark.parametrize("endpoint", ["completion", "chat"])
def test_shared_prefixes_are_taken_from_the_cache_after_their_first_request(
    llama_server: LocalLlamaServer, endpoint: str
) -> None:
    config = BenchConfig(
        (llama_server.base_url,),
        Load(concurrency=1),
        requests=6,
        warmup=0,
        input_tokens=(20, 20),
        output_tokens=4,
        prefix_tokens=200,
        prefix_groups=1,
        endpoint=endpoint,
    )
    result = run_checked(config)
    if endpoint == "completion":
        assert result.figures["total_input_tokens"] == 6 * 220
    # The prefix, each time after the first (a chat's template begins before it).
    later = [r.cached_tokens or 0 for r in result.records[1:]]
    assert min(later) >= 200
    assert result.server["prompt_cached_share"] >= 5 * 200 / result.figures["total_input_tokens"]


# --- The client's audit ------------------------------------------------------------------


async def run_beside_a_busy_loop(config: BenchConfig) -> BenchResult:
    """*config* run while another task of the same loop holds it 50 ms at a time."""
    async with trio.open_nursery() as nursery:

        async def hog() -> None:
            while True:
                time.sleep(0.05)  # noqa: ASYNC251 - the loop held, as a slow client holds it
                await trio.sleep(0.001)

        nursery.start_soon(hog)
        result: BenchResult = await run_bench(config)
        nursery.cancel_scope.cancel()
    return result


@pytest.mark.parametrize("load", [Load(concurrency=2), Load(rate=50.0, concurrency=2)])
def test_a_client_held_back_is_flagged_and_a_calm_one_is_not(
    llama_server: LocalLlamaServer, load: Load
) -> None:
    config = BenchConfig(
        (llama_server.base_url,), load, requests=20, warmup=0, input_tokens=(8, 8), output_tokens=16
    )
    calm: BenchResult = trio.run(run_bench, config)
    assert calm.audit is not None
    assert calm.audit["limited_by_client"] is False, calm.audit["reasons"]
    assert not any("limited" in warning for warning in calm.warnings)

    held = trio.run(run_beside_a_busy_loop, config)
    assert held.audit is not None
    assert held.audit["limited_by_client"] is True
    assert any(reason.startswith("event loop lag p99") for reason in held.audit["reasons"])
    assert any("limited by the client: event loop lag" in w for w in held.warnings)
    assert held.as_json()["audit"]["limited_by_client"] is True
