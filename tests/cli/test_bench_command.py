"""The serving benchmark's command against a real llama-server: a run cut by SIGINT,
workers and their merged result, a local server when given no URL, and bad input as
one line."""

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

from ..support.commands import COMMAND, assert_one_line_error, run_command
from ..support.resources import engines

LATENCIES = ("ttft", "tpot", "itl", "e2el")


def check_ordered(figures: dict[str, object]) -> None:
    for name in LATENCIES:
        p50, p90, p99 = (float(figures[f"p{p}_{name}_ms"]) for p in (50, 90, 99))  # type: ignore[arg-type]
        assert p50 <= p90 <= p99, name


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
        (["--endpoint", "embeddings"], "--endpoint"),
        (["--slo", "ttft_ms=abc"], "not a positive number"),
        (["--slo", "ttft_ms=-5"], "not a positive number"),
        (["--slo", "mean_ttft_ms=5"], "no SLO is named"),
        (["--slo", "goodput=5"], "no SLO is named"),
        (["--slo", "p0_ttft_ms=5"], "percentile"),
        (["--slo", "p101_itl_ms=5"], "percentile"),
        (["--slo", "ttft_ms=5,ttft=6"], "given twice"),
        (["--slo", "ttft_ms"], "NAME=MILLISECONDS"),
        (["--slo", "ttft_ms=5", "--slo-attainment", "0"], "attainment"),
        (["--turns", "0"], "--turns"),
        (["--turns", "2", "--prefix-tokens", "50"], "shared prefixes go with synthetic"),
        (["--turns", "2", "--think-time", "-1"], "--think-time"),
        (["--turns", "2", "--prompts", "{prompts}"], "one of prompts, conversations"),
        (["--conversations", "{not_json}"], "not JSON"),
        (["--conversations", "{empty_conversation}"], "an empty conversation"),
        (["--conversations", "{not_text}"], "turn 1 is not text"),
        (["--conversations", "{wrong_layout}"], 'not {"conversations"'),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(
    arguments: list[str], says: str, llama_server: LocalLlamaServer, tmp_path: Path
) -> None:
    not_json = tmp_path / "bad.jsonl"
    not_json.write_text("{not json\n")
    files = {
        "prompts": '{"prompt": "hello"}\n',
        "empty_conversation": '{"turns": []}\n',
        "not_text": '[{"conversations": [{"from": "human", "value": 7}]}]',
        "wrong_layout": '[{"messages": []}]',
    }
    places = {}
    for name, content in files.items():
        (tmp_path / name).write_text(content)
        places[f"{{{name}}}"] = str(tmp_path / name)
    places |= {
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


def test_workers_run_a_chat_benchmark_and_say_so(
    llama_server: LocalLlamaServer, tmp_path: Path
) -> None:
    output = tmp_path / "chat.json"
    result = run_command(
        "bench", "--url", llama_server.base_url, "--endpoint", "chat", "--concurrency", "2",
        "--requests", "4", "--warmup", "0", "--output-tokens", "7", "--workers", "2",
        "--json", str(output), timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    figures = json.loads(output.read_text())
    assert figures["config"]["endpoint"] == "chat"
    assert figures["token_check"] == {"client_tokens": 28, "server_tokens": 28, "equal": True}


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


@pytest.mark.parametrize("workers", ["1", "2"])
def test_slos_give_goodput_from_the_requests_themselves(
    llama_server: LocalLlamaServer, tmp_path: Path, workers: str
) -> None:
    """Goodput and the verdict, checked against the run's own records (and its tokens
    against the server's counter): one objective every request meets, one none can."""
    output = tmp_path / "slo.json"
    result = run_command(
        "bench", "--url", llama_server.base_url, "--concurrency", "2", "--requests", "8",
        "--warmup", "0", "--output-tokens", "12", "--workers", workers,
        "--slo", "ttft_ms=60000,tpot_ms=0.0001,p90_e2el_ms=60000", "--json", str(output),
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    figures = json.loads(output.read_text())
    assert figures["token_check"]["equal"] is True
    slo = figures["slo"]
    requests = figures["requests"]
    met_ttft = [r for r in requests if (r["first_token"] - r["sent"]) * 1000 <= 60000]
    assert slo["measured"]["ttft_ms"] == len(met_ttft) / len(requests) == 1.0
    assert slo["measured"]["tpot_ms"] == 0.0  # no request of 12 tokens in 0.1 us each
    e2els = sorted((r["ended"] - r["sent"]) * 1000 for r in requests)
    assert slo["measured"]["p90_e2el_ms"] <= e2els[-1]
    assert slo["goodput"] == 0.0
    assert slo["missed"] == ["tpot_ms"]
    assert slo["met"] is False
    shown = " ".join(result.stdout.split())
    assert "Request goodput (req/s): 0.00" in shown
    assert "SLOs met: no: tpot_ms" in shown


def test_strict_exits_1_when_the_client_limited_the_run(
    llama_server: LocalLlamaServer, tmp_path: Path
) -> None:
    """A rate past what one process can send is flagged, and --strict fails the run; a
    run the client keeps up with passes."""
    output = tmp_path / "held.json"
    held = run_command(
        "bench", "--url", llama_server.base_url, "--rate", "100000", "--duration", "1",
        "--max-concurrency", "2", "--warmup", "0", "--output-tokens", "2", "--strict",
        "--json", str(output), timeout=120,
    )  # fmt: skip
    assert held.returncode == 1, held.stderr
    assert "Limited by the client: yes" in " ".join(held.stdout.split())
    audit = json.loads(output.read_text())["audit"]
    assert audit["limited_by_client"] is True
    assert any(reason.startswith("achieved rate") for reason in audit["reasons"])
    calm = run_command(
        "bench", "--url", llama_server.base_url, "--rate", "20", "--requests", "10",
        "--warmup", "0", "--output-tokens", "4", "--strict", timeout=120,
    )  # fmt: skip
    assert calm.returncode == 0, calm.stdout + calm.stderr
    assert "Limited by the client: no" in " ".join(calm.stdout.split())


def test_compare_sets_saved_results_side_by_side(
    llama_server: LocalLlamaServer, tmp_path: Path
) -> None:
    paths = []
    for concurrency in ("1", "2"):
        path = tmp_path / f"c{concurrency}.json"
        done = run_command(
            "bench", "--url", llama_server.base_url, "--concurrency", concurrency,
            "--requests", "6", "--warmup", "0", "--output-tokens", "8", "--json", str(path),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        paths.append(str(path))
    compared = run_command("bench", "compare", *paths)
    assert compared.returncode == 0, compared.stderr
    header, rule, *rows = compared.stdout.splitlines()
    assert set(rule) == {"-", " "}
    assert header.split() == ["figure", "c1", "c2", "change"]
    throughput = next(row for row in rows if row.startswith("Request throughput"))
    first, second = (json.loads(Path(p).read_text())["request_throughput"] for p in paths)
    assert f"{(second - first) / first:+.1%}" in throughput
    not_result = tmp_path / "other.json"
    not_result.write_text('{"hello": 1}')
    assert_one_line_error(
        run_command("bench", "compare", paths[0], str(not_result)), "not a result", 2
    )
    assert_one_line_error(run_command("bench", "compare", paths[0]), "at least two", 2)


def test_a_sweep_runs_each_load_and_checks_each_against_the_server(
    llama_server: LocalLlamaServer, tmp_path: Path
) -> None:
    output, plot = tmp_path / "sweep.json", tmp_path / "sweep.png"
    result = run_command(
        "bench", "--url", llama_server.base_url, "--requests", "6", "--warmup", "0",
        "--output-tokens", "8", "--slo", "p99_ttft_ms=60000", "--json", str(output),
        "--plot", str(plot), "sweep", "--concurrencies", "1,2", timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    written = json.loads(output.read_text())
    sweep, results = written["sweep"], written["results"]
    assert [p["load"] for p in sweep["points"]] == [1, 2]
    for each in results:
        assert each["completed"] == 6
        assert each["token_check"] == {"client_tokens": 48, "server_tokens": 48, "equal": True}
    assert all(p["slo_met"] is True for p in sweep["points"])
    assert sweep["summary"]["max_load_meeting_slo"] == 2
    assert plot.read_bytes()[:4] == b"\x89PNG"
    shown = " ".join(result.stdout.split())
    assert "Serving Benchmark Sweep" in shown
    assert "Highest concurrency meeting the SLO: 2" in shown
    # A sweep compares with a sweep, load by load.
    again = tmp_path / "again.json"
    again.write_text(output.read_text())
    compared = run_command("bench", "compare", str(output), str(again))
    assert compared.returncode == 0, compared.stderr
    assert any(row.split("@")[0].strip() == "tok/s" for row in compared.stdout.splitlines())


def test_find_max_raises_the_rate_until_it_stops_paying(
    llama_server: LocalLlamaServer, tmp_path: Path
) -> None:
    output = tmp_path / "max.json"
    result = run_command(
        "bench", "--url", llama_server.base_url, "--requests", "20", "--warmup", "0",
        "--output-tokens", "4", "--max-concurrency", "2", "--json", str(output),
        "sweep", "--rates", "50", "--find-max", timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    points = json.loads(output.read_text())["sweep"]["points"]
    loads = [p["load"] for p in points]
    assert loads == [50 * 2**n for n in range(len(loads))]
    assert len(loads) >= 2
    # It stopped where the last doubling grew throughput by less than a tenth.
    last, before = points[-1]["output_throughput"], points[-2]["output_throughput"]
    assert last < before * 1.1 or len(loads) == 12


@pytest.mark.parametrize(
    ("arguments", "says"),
    [
        (["sweep"], "give --rates or --concurrencies"),
        (["sweep", "--rates", "1", "--concurrencies", "2"], "give --rates or --concurrencies"),
        (["sweep", "--concurrencies", ","], "give at least one load"),
        (["sweep", "--rates", "0,2"], "a load is above 0"),
        (["sweep", "--concurrencies", "1.5"], "a whole number"),
        (["--requests", "5", "sweep", "--concurrencies", "1", "--find-max"], "at least 20"),
        (["--workers", "2", "sweep", "--concurrencies", "2"], "no --workers"),
    ],
)
def test_a_bad_sweep_is_one_line_and_exit_code_2(
    arguments: list[str], says: str, llama_server: LocalLlamaServer
) -> None:
    result = run_command("bench", "--url", llama_server.base_url, *arguments)
    assert_one_line_error(result, says, 2)
