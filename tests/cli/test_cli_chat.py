"""``llamacpp-adapter stream --chat``, the real command: with no --url, the local model
thinks and calls its tool, its reasoning apart from the call, which is one JSON line;
a --tools file that cannot be read, or is not tools, is one line and exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ..support.commands import assert_one_line_error, run_command


def test_a_chat_with_the_local_model_thinks_and_calls_its_tool() -> None:
    result = run_command("stream", "--chat", "What is the weather in Paris?", timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "The user asks about the weather."  # not a terminal: not dimmed
    [call_line] = [line for line in lines if line.startswith("{")]
    call = json.loads(call_line)["tool_call"]
    assert call["name"] == "get_weather"
    assert json.loads(call["arguments"]) == {"city": "Paris"}
    assert lines.index(call_line) > 0
    assert lines[-1].startswith("-- ")
    assert lines[-1].endswith("stop: tool_calls")


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, "cannot read"),
        ("not json", "is not JSON"),
        ('[{"type": "function"}]', "tools[0]"),
        ('{"name": "x"}', "tools must be a sequence"),
    ],
)
def test_a_bad_tools_file_is_one_line_and_exit_2(
    tmp_path: Path, content: str | None, says: str
) -> None:
    path = tmp_path / "tools.json"
    if content is not None:
        path.write_text(content)
    # An unreachable engine: the file is refused before anything is sent.
    result = run_command(
        "stream", "--chat", "hi", "--tools", str(path), "--url", "http://127.0.0.1:9"
    )
    assert_one_line_error(result, says, 2)


def test_a_chat_and_a_prompt_together_are_refused() -> None:
    result = run_command("stream", "hi", "--chat", "hi", "--url", "http://127.0.0.1:9")
    assert_one_line_error(result, "not both", 2)
