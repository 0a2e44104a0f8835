"""The serving benchmark against a real llama-server: the closed and the open loop, the
client's tokens against the server's counter, ordered percentiles, a run cut by SIGINT,
and bad input."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import trio

from llamacpp_adapter import LlamaCppHttpAdapter
from llamacpp_adapter._local.server import LocalLlamaServer
from llamacpp_adapter.bench import BenchConfig, BenchResult, run_bench
from llamacpp_adapter.bench._load import Load
from llamacpp_adapter.bench._workers import worker_configs

from .commands import COMMAND, assert_one_line_error, run_command
from .resources import engines

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


def interrupt_when_busy(command: list[str], server: LocalLlamaServer) -> tuple[int, str, str]:
    """Run *command*, send it SIGINT once both of *server*'s slots stream; its exit
    code, stdout and stderr."""
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        deadline = time.monotonic() + 60
        # Another process's state: nothing to wait on but the answer.
        while trio.run(busy_slots, server.base_url) < 2:
            assert time.monotonic() < deadline, "the run never filled the slots"
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    return process.returncode, out.decode(), err.decode()


def test_a_run_cut_by_sigint_frees_every_slot_and_writes_a_partial_result(
    llama_server: LocalLlamaServer, tmp_path: Path
) -> None:
    output = tmp_path / "result.json"
    command = [
        *COMMAND, "bench", "--url", llama_server.base_url,
        "--concurrency", "2", "--requests", "6", "--warmup", "0",
        "--output-tokens", "30000", "--json", str(output),
    ]  # fmt: skip
    code, summary, _ = interrupt_when_busy(command, llama_server)
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
    result = run_command("bench", *url, *(places.get(a, a) for a in arguments))
    assert_one_line_error(result, says, 2)


def test_workers_share_the_load_and_their_results_merge(
    llama_server: LocalLlamaServer, tmp_path: Path
) -> None:
    output = tmp_path / "merged.json"
    result = run_command(
        "bench", "--url", llama_server.base_url, "--concurrency", "2", "--requests", "9",
        "--warmup", "2", "--output-tokens", "10", "--workers", "2", "--json", str(output),
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    figures = json.loads(output.read_text())
    assert figures["completed"] == 9
    # The server's own /props, whole: its build and its slots among the rest.
    assert figures["server_props"][0]["total_slots"] == 2
    assert "build_info" in figures["server_props"][0]
    assert figures["client"]["processes"] == 2
    # The warm-up's tokens are the server's too: 9 + 2 requests of 10.
    assert figures["token_check"] == {"client_tokens": 110, "server_tokens": 110, "equal": True}
    check_ordered(figures)

    # Two results merged by hand: the same requests, the same figures.
    halves = []
    for number, share in enumerate((4, 5)):
        path = tmp_path / f"part-{number}.json"
        half = run_command(
            "bench", "--url", llama_server.base_url, "--requests", str(share),
            "--warmup", "0", "--output-tokens", "6", "--json", str(path), timeout=120,
        )  # fmt: skip
        assert half.returncode == 0, half.stderr
        halves.append(path)
    merged_path = tmp_path / "by-hand.json"
    merged = run_command("bench", "merge", *map(str, halves), "--json", str(merged_path))
    assert merged.returncode == 0, merged.stderr
    assert "Successful requests:                    9" in merged.stdout
    assert json.loads(merged_path.read_text())["total_output_tokens"] == 54


def test_each_worker_gets_its_share() -> None:
    config = BenchConfig(("http://x",), Load(concurrency=5), requests=11, warmup=3, seed=1)
    configs = worker_configs(config, 3)
    assert [c.load.concurrency for c in configs] == [2, 2, 1]
    assert [c.requests for c in configs] == [4, 4, 3]
    assert [c.warmup for c in configs] == [1, 1, 1]
    assert len({c.seed for c in configs}) == 3
    assert not any(c.sample_server for c in configs)
    opened = worker_configs(BenchConfig(("http://x",), Load(rate=9.0), requests=6), 3)
    assert [c.load.rate for c in opened] == [3.0, 3.0, 3.0]
    with pytest.raises(ValueError, match="concurrency of at least 3"):
        worker_configs(BenchConfig(("http://x",), Load(concurrency=2)), 3)


def test_a_run_by_duration_from_the_public_module(llama_server: LocalLlamaServer) -> None:
    from llamacpp_adapter.bench import BenchConfig as PublicConfig
    from llamacpp_adapter.bench import Load as PublicLoad
    from llamacpp_adapter.bench import run_bench as public_run

    config = PublicConfig(
        (llama_server.base_url,), PublicLoad(concurrency=2), requests=None, duration_s=1.0,
        warmup=0, output_tokens=8,
    )  # fmt: skip
    started = time.monotonic()
    result = trio.run(public_run, config)
    assert time.monotonic() - started < 10
    assert result.figures["completed"] > 2
    assert not result.partial
    assert result.figures["total_output_tokens"] == 8 * result.figures["completed"]
    # The requests open when the duration ended are not counted, the server's tokens of
    # them are: the check cannot say, and there is no warning that it differs.
    assert result.token_check["equal"] is None
    assert not result.warnings


def test_without_a_url_bench_runs_against_a_local_server_it_starts() -> None:
    running = engines()
    result = run_command(
        "bench", "--requests", "6", "--concurrency", "3", "--output-tokens", "5",
        "--warmup", "0", timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Successful requests:                    6" in result.stdout
    assert "Client tokens = server's:               True" in result.stdout
    assert "starting a local llama-server" in result.stderr
    assert not engines() - running  # stopped with the run


def test_workers_cut_by_sigint_write_a_partial_result(
    llama_server: LocalLlamaServer, tmp_path: Path
) -> None:
    output = tmp_path / "result.json"
    command = [
        *COMMAND, "bench", "--url", llama_server.base_url,
        "--concurrency", "2", "--requests", "4", "--warmup", "0", "--workers", "2",
        "--output-tokens", "30000", "--json", str(output),
    ]  # fmt: skip
    code, _, errors = interrupt_when_busy(command, llama_server)
    assert code == 128 + signal.SIGINT, errors
    assert "Traceback" not in errors, errors
    assert trio.run(busy_slots, llama_server.base_url) == 0
    assert json.loads(output.read_text())["partial"] is True


def test_merging_what_is_not_a_result_is_one_line_and_exit_code_2(tmp_path: Path) -> None:
    for content in ("{not json", '{"partial": false}', "[]"):
        path = tmp_path / "bad.json"
        path.write_text(content)
        result = run_command("bench", "merge", str(path))
        assert_one_line_error(result, "not a result of llamacpp-adapter bench", 2)
