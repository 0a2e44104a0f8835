"""The llamacpp-adapter command line, run as a user runs it."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import click
import pytest
import trio
from click.testing import CliRunner

from llamacpp_adapter import End, StreamEvent, TaskRequest, Token, open_relay_stream
from llamacpp_adapter._cli import main
from llamacpp_adapter._cli.stream import TERMINAL_SAFE, read_prompt
from llamacpp_adapter._host.host import ENV_API_KEY
from llamacpp_adapter._local.server import LocalLlamaServer
from llamacpp_adapter._local.tinymodel import PASSAGE

from ..conftest import API_KEY
from ..support.wire import LAST_CHUNK, STREAM_HEAD, chunked, token_event

SUMMARY_PREFIX = "-- "


def test_main_job_streams_from_a_server_it_starts_itself() -> None:
    # The README's main-job command, with no --url: it starts llama-server, streams,
    # prints a summary and stops the server.
    result = subprocess.run(
        [sys.executable, "-m", "llamacpp_adapter", "stream", "hello the", "--max-tokens", "12"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    text, summary = result.stdout.rstrip("\n").rsplit("\n", 1)
    # The local model writes the passage's words (sampled: which ones varies).
    words = re.findall(r"[a-z]+", text.lower())
    assert words
    assert set(words) <= set(re.findall(r"[a-z]+", PASSAGE.lower()))
    assert summary.startswith("-- 12 tokens,")
    assert "tokens/s" in summary
    assert summary.endswith("stop: limit")
    assert "starting a local llama-server" in result.stderr


def test_console_script_is_installed() -> None:
    script = shutil.which("llamacpp-adapter", path=str(Path(sys.executable).parent))
    assert script is not None
    result = subprocess.run([script, "--help"], capture_output=True, text=True, check=True)
    assert "stream" in result.stdout


def test_stream_with_url_prints_the_engine_text(llama_server: LocalLlamaServer) -> None:
    runner = CliRunner()
    args = ["stream", "hello the", "--max-tokens", "16", "--seed", "42", "--url"]
    first = runner.invoke(main, [*args, llama_server.base_url])
    second = runner.invoke(main, [*args, llama_server.base_url, "--backend", "asyncio"])
    assert first.exit_code == 0, first.output
    assert second.exit_code == 0, second.output
    text, summary = first.output.rstrip("\n").rsplit("\n", 1)
    assert text.strip()
    assert second.output.startswith(text)  # the same tokens on Trio and on asyncio
    assert summary.startswith("-- 16 tokens,")


def test_health_and_props_print_json(llama_server: LocalLlamaServer) -> None:
    runner = CliRunner()
    health = runner.invoke(main, ["health", "--url", llama_server.base_url])
    assert health.exit_code == 0, health.output
    assert json.loads(health.output)["ready"] is True
    props = runner.invoke(main, ["props", "--url", llama_server.base_url])
    assert props.exit_code == 0, props.output
    assert json.loads(props.output)["slots_total"] == 2


def test_health_of_an_unreachable_server_exits_1() -> None:
    result = CliRunner().invoke(main, ["health", "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 1
    assert json.loads(result.output)["status"] == "unreachable"


def test_bad_url_is_a_clear_error() -> None:
    result = CliRunner().invoke(main, ["stream", "hi", "--url", "ftp://example"])
    assert result.exit_code == 1
    assert "http or https" in result.output


def test_control_characters_are_escaped_for_the_terminal() -> None:
    assert "a\x1b[31mb\x08\n\tc".translate(TERMINAL_SAFE) == "a\\x1b[31mb\\x08\n\tc"


def test_stream_without_engine_timings_still_prints_a_summary() -> None:
    # An engine whose final chunk has no timings sends no Metrics event.
    final = b'data: {"content":"","stop":true,"stop_type":"eos","tokens_predicted":2}\n\n'
    body = STREAM_HEAD + chunked(token_event(1) + token_event(2) + final) + LAST_CHUNK
    listener = socket.create_server(("127.0.0.1", 0))

    def serve_once() -> None:
        connection, _ = listener.accept()
        with connection:
            request = b""
            while b"\r\n\r\n" not in request:
                request += connection.recv(65536)
            connection.sendall(body)

    thread = threading.Thread(target=serve_once)
    thread.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    result = CliRunner().invoke(main, ["stream", "hi", "--url", url])
    thread.join(timeout=10)
    listener.close()
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1].startswith("-- 2 tokens,")
    assert result.output.splitlines()[-1].endswith("stop: eos")


def test_relay_serves_the_engine_over_websocket(llama_server: LocalLlamaServer) -> None:
    token = "cli-relay-token-8c2d41"
    process = subprocess.Popen(
        [sys.executable, "-m", "llamacpp_adapter", "relay", "--url", llama_server.base_url,
         "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "LLAMACPP_ADAPTER_RELAY_TOKEN": token},
    )  # fmt: skip
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        assert line.startswith("-- relay listening on ws://127.0.0.1:"), line
        url = line.split()[-1]

        async def stream() -> list[StreamEvent]:
            request = TaskRequest("hello the", max_tokens=8, seed=1)
            async with open_relay_stream(url, request, token=token) as events:
                return [event async for event in events]

        events = trio.run(stream)
        assert any(isinstance(e, Token) for e in events)
        assert isinstance(events[-1], End)
        assert events[-1].tokens_out == 8
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stderr is not None:
            process.stderr.close()


def test_the_api_key_comes_from_the_variable_the_host_reads(
    llama_server_with_key: LocalLlamaServer,
) -> None:
    url = llama_server_with_key.base_url
    refused = CliRunner().invoke(main, ["props", "--url", url], env={ENV_API_KEY: ""})
    assert refused.exit_code != 0
    taken = CliRunner().invoke(main, ["props", "--url", url], env={ENV_API_KEY: API_KEY})
    assert taken.exit_code == 0, taken.output
    assert API_KEY not in taken.output


def test_a_prompt_from_standard_input_or_a_file_is_the_same_prompt(
    llama_server: LocalLlamaServer, tmp_path: Path
) -> None:
    # Long prompts do not fit in argv (a Linux argument holds at most 128 KiB): '-' reads
    # standard input, --prompt-file a file. Greedy, the same prompt gives the same text.
    prompt = "the quick brown fox jumps over the lazy dog. " * 400  # 18 KB
    path = tmp_path / "prompt.txt"
    path.write_text(prompt)
    runner = CliRunner()
    common = ["--max-tokens", "8", "--url", llama_server.base_url]
    given = runner.invoke(main, ["stream", prompt, *common])
    piped = runner.invoke(main, ["stream", "-", *common], input=prompt)
    read = runner.invoke(main, ["stream", "--prompt-file", str(path), *common])
    for result in (given, piped, read):
        assert result.exit_code == 0, result.output
    text = given.output.rsplit("\n-- ", 1)[0]
    assert piped.output.rsplit("\n-- ", 1)[0] == text
    assert read.output.rsplit("\n-- ", 1)[0] == text


def test_the_prompt_is_read_from_where_it_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("from stdin"))
    assert read_prompt("-", None) == "from stdin"
    assert read_prompt(None, io.StringIO("from a file")) == "from a file"
    assert read_prompt("as given", None) == "as given"
    for argument, file in (
        ("a", io.StringIO("b")),
        (None, None),
        ("", None),
        (None, io.StringIO(" ")),
    ):
        with pytest.raises(click.UsageError):
            read_prompt(argument, file)


def test_every_option_of_every_command_says_what_it_does() -> None:
    for name, command in main.commands.items():
        for parameter in command.params:
            if isinstance(parameter, click.Option):
                assert parameter.help, f"{name} {parameter.opts[0]} has no help"
                default = parameter.default
                if isinstance(default, int | float | str) and not parameter.is_flag:
                    shown = parameter.show_default or "Default" in parameter.help
                    assert shown, f"{name} {parameter.opts[0]} hides its default"
