"""The serving benchmark against a real llama-server: the closed and the open loop, the
client's tokens against the server's counter, ordered percentiles, a run cut by SIGINT,
and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from llamacpp_adapter import LlamaCppHttpAdapter
from llamacpp_adapter._bench_load import Load
from llamacpp_adapter._bench_run import BenchConfig, BenchResult, run_bench
from llamacpp_adapter._local_server import LocalLlamaServer

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


async def busy_slots(url: str) -> int:
    async with LlamaCppHttpAdapter(url) as adapter:
        return sum(1 for slot in await adapter.slots() if slot["is_processing"])


def test_a_run_cut_by_sigint_frees_every_slot_and_writes_a_partial_result(
    llama_server: LocalLlamaServer, tmp_path: Path
) -> None:
    output = tmp_path / "result.json"
    command = [
        sys.executable, "-m", "llamacpp_adapter", "bench", "--url", llama_server.base_url,
        "--concurrency", "2", "--requests", "6", "--warmup", "0",
        "--output-tokens", "30000", "--json", str(output),
    ]  # fmt: skip
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        deadline = time.monotonic() + 60
        while trio.run(busy_slots, llama_server.base_url) < 2:  # both streams run
            assert time.monotonic() < deadline, "the run never filled the slots"
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=30)
        assert process.stdout is not None
        summary = process.stdout.read().decode()
    assert code == 128 + signal.SIGINT
    assert "(partial)" in summary
    assert trio.run(busy_slots, llama_server.base_url) == 0  # freed as the run ended
    figures = json.loads(output.read_text())
    assert figures["partial"] is True
    assert figures["command"][1] == "bench"
    assert "api_key" not in figures["config"]


@pytest.mark.parametrize(
    ("arguments", "says"),
    [
        (["--rate", "0"], "--rate"),
        (["--concurrency", "0"], "--concurrency"),
        (["--concurrency", "2", "--rate", "3"], "--concurrency"),
        (["--input-tokens", "x"], "--input-tokens"),
        (["--input-tokens", "9:3"], "input lengths"),
        (["--prompts", "{missing}"], "--prompts"),
        (["--prompts", "{directory}"], "--prompts"),
        (["--prompts", "{not_json}"], "not JSON"),
        (["--url", "{unreachable}"], "--url"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(
    arguments: list[str], says: str, llama_server: LocalLlamaServer, tmp_path: Path
) -> None:
    not_json = tmp_path / "bad.jsonl"
    not_json.write_text("{not json\n")
    places = {
        "{missing}": str(tmp_path / "missing.jsonl"),
        "{directory}": str(tmp_path),
        "{not_json}": str(not_json),
        "{unreachable}": "http://127.0.0.1:9",
    }
    url = [] if "--url" in arguments else ["--url", llama_server.base_url]
    result = subprocess.run(
        [sys.executable, "-m", "llamacpp_adapter", "bench", *url,
         *(places.get(a, a) for a in arguments)],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ},
    )  # fmt: skip
    lines = result.stderr.splitlines()
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1, result.stderr
    assert says in lines[0]
    assert result.returncode == 2, result.stderr
