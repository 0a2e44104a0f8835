"""The README's examples run as written, under Trio and under asyncio."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from llamacpp_adapter._local.server import LocalLlamaServer

README = (Path(__file__).parents[2] / "README.md").read_text()
EXAMPLE = re.search(r"## Use it from Trio\n\n```python\n(.*?)```", README, re.S)


def run_example(source: str, backend: str) -> subprocess.CompletedProcess[str]:
    """Run a README example on *backend*; it must succeed."""
    if backend == "asyncio":  # what the README says to change
        source = source.replace("import trio\n", "import asyncio\n")
        source = source.replace("trio.run(main)", "asyncio.run(main())")
    result = subprocess.run(
        [sys.executable, "-c", source], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return result


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_readme_example_runs(llama_server: LocalLlamaServer, backend: str) -> None:
    assert EXAMPLE is not None
    source = EXAMPLE.group(1).replace("http://127.0.0.1:8080", llama_server.base_url)
    result = run_example(source, backend)
    assert re.search(r"\n\d+ tokens, stop: (eos|limit)\n$", result.stdout)
    assert "failed:" not in result.stdout


HOST_EXAMPLE = re.search(
    r"### Pools of replicas: `AdapterHost`\n\n```python\n(.*?)```", README, re.S
)


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_readme_host_example_runs(llama_server: LocalLlamaServer, backend: str) -> None:
    assert HOST_EXAMPLE is not None
    source = HOST_EXAMPLE.group(1)
    for port in ("8080", "8081"):  # two replicas of the one test server
        source = source.replace(f"http://127.0.0.1:{port}", llama_server.base_url)
    result = run_example(source, backend)
    assert re.search(r"\nserved by r[01]\n$", result.stdout)


FAN_IN_EXAMPLE = re.search(r"A fan-in of several streams.*?```python\n(.*?)```", README, re.S)


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_readme_fan_in_example_runs(llama_server: LocalLlamaServer, backend: str) -> None:
    assert FAN_IN_EXAMPLE is not None
    source = FAN_IN_EXAMPLE.group(1).replace("http://127.0.0.1:8080", llama_server.base_url)
    result = run_example(source, backend)
    ends = re.findall(r"^(\w+): 24 tokens$", result.stdout, re.M)
    assert len(set(ends)) == 6, result.stdout  # every job, each once, each whole


CHAT_EXAMPLE = re.search(
    r"### Chats: reasoning and tool calls\n.*?```python\n(.*?)```", README, re.S
)


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_readme_tool_calling_loop_runs(scripted_server: LocalLlamaServer, backend: str) -> None:
    assert CHAT_EXAMPLE is not None
    source = CHAT_EXAMPLE.group(1).replace("http://127.0.0.1:8080", scripted_server.base_url)
    result = run_example(source, backend)
    assert result.stdout == "called get_weather: sunny, 24 C in Paris\nIt is sunny in Paris.\n"
