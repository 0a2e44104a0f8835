"""``llamacpp-adapter stream``: a completion streamed to the terminal as it comes, then a
one-line summary."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from typing import Any, TextIO

import click

from .._adapter import LlamaCppHttpAdapter
from .._types import ChatRequest, End, Metrics, Reasoning, TaskRequest, Token, ToolCall
from .engine import engine_url
from .group import api_key_option, backend_option, count_option, main, url_option
from .running import run

__all__ = ["stream"]

# Model output may hold control characters, escape sequences among them: show them as
# escapes rather than let them drive the terminal. Newline and tab pass.
TERMINAL_SAFE = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F] if c not in (0x09, 0x0A)}
#: The local model is sampled, not decoded greedily: its most likely path soon repeats.
LOCAL_TEMPERATURE = 0.8


@main.command()
@click.argument("prompt", required=False)
@click.option(
    "--chat",
    "chat_text",
    metavar="TEXT",
    help="Ask TEXT as a user's turn of a chat (the chat endpoint): the model's reasoning "
    "is printed apart from its answer (dimmed on a terminal), each tool call as a JSON "
    "line. Without --url, the local model thinks and calls its tool.",
)
@click.option(
    "--tools",
    "tools_file",
    type=click.Path(dir_okay=False),
    help="A JSON file of OpenAI-style tool definitions the chat may call.",
)
@click.option(
    "--prompt-file",
    type=click.File("r", encoding="utf-8"),
    help="Read the prompt from this file ('-': standard input), for a long prompt.",
)
@url_option
@api_key_option
@backend_option()
@count_option("--max-tokens", default=64, help="The most tokens to generate.")
@click.option(
    "--temperature",
    type=click.FloatRange(min=0.0),
    default=None,
    help="Sampling temperature; 0 is greedy, the same text every time. Default: 0, or "
    f"{LOCAL_TEMPERATURE} with the local model.",
)
@click.option(
    "--seed",
    type=click.IntRange(0, 2**32 - 1),
    default=None,
    help="The sampling seed. It changes nothing at temperature 0 (greedy).",
)
@click.option("--ignore-eos", is_flag=True, help="Generate until max-tokens.")
def stream(
    prompt: str | None,
    chat_text: str | None,
    tools_file: str | None,
    prompt_file: TextIO | None,
    url: str | None,
    api_key: str | None,
    backend: str,
    max_tokens: int,
    temperature: float | None,
    seed: int | None,
    ignore_eos: bool,
) -> None:
    """Stream the completion of PROMPT to the terminal, then print a summary.

    PROMPT '-' reads it from standard input; --prompt-file reads it from a file. Without
    --url, start a local llama-server with a tiny model of a public-domain passage's word
    pairs (its text reads like the passage, loosely) and stop it afterwards.
    """
    if chat_text is not None:
        if prompt is not None or prompt_file is not None:
            raise click.UsageError("give a prompt or --chat, not both")
        chat = chat_request(chat_text, tools_file, url=url, max_tokens=max_tokens, seed=seed)
        if temperature is not None:
            chat = dataclasses.replace(chat, temperature=temperature)
        with engine_url(url, model="scripted") as base_url:
            run(_stream, base_url, api_key, chat, backend=backend)
        return
    if tools_file is not None:
        raise click.UsageError("--tools goes with --chat")
    if temperature is None:
        temperature = 0.0 if url is not None else LOCAL_TEMPERATURE
    request = TaskRequest(
        read_prompt(prompt, prompt_file),
        max_tokens=max_tokens,
        temperature=temperature,
        seed=seed,
        extra={"ignore_eos": True} if ignore_eos else {},
    )
    with engine_url(url) as base_url:
        run(_stream, base_url, api_key, request, backend=backend)


def chat_request(
    text: str, tools_file: str | None, *, url: str | None, max_tokens: int, seed: int | None
) -> ChatRequest:
    """The chat of one user's turn, *text*, with the tools of *tools_file* (or, for the
    local model, its own tool)."""
    if not text.strip():
        raise click.UsageError("the chat's text is empty")
    tools: Any = None
    if tools_file is not None:
        try:
            with open(tools_file, encoding="utf-8") as file:
                tools = json.load(file)
        except OSError as exc:
            raise click.UsageError(f"--tools: cannot read {tools_file}: {exc.strerror}") from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise click.UsageError(f"--tools: {tools_file} is not JSON: {exc}") from exc
    elif url is None:
        from .._local.tinymodel import SCRIPTED_TOOLS

        tools = list(SCRIPTED_TOOLS)
    try:
        return ChatRequest(
            [{"role": "user", "content": text}], tools=tools, max_tokens=max_tokens, seed=seed
        )
    except (TypeError, ValueError) as exc:
        raise click.UsageError(f"--tools: {exc}") from exc


def read_prompt(argument: str | None, file: TextIO | None) -> str:
    """The prompt, from the argument, standard input ('-') or a file; never empty."""
    if argument is not None and file is not None:
        raise click.UsageError("give the prompt as an argument or with --prompt-file, not both")
    if file is not None:
        text = file.read()
    elif argument == "-":
        text = sys.stdin.read()
    elif argument is not None:
        text = argument
    else:
        raise click.UsageError("give a prompt: PROMPT, '-' for standard input, or --prompt-file")
    if not text.strip():
        raise click.UsageError("the prompt is empty")
    return text


async def _stream(base_url: str, api_key: str | None, request: TaskRequest | ChatRequest) -> None:
    """Print *request*'s stream as it comes: its text (a chat's reasoning apart, dimmed
    on a terminal, and each call as a JSON line), then a summary."""
    out = sys.stdout
    dim, undim = ("\x1b[2m", "\x1b[0m") if out.isatty() else ("", "")
    started = time.perf_counter()
    engine = ""
    thinking = False
    async with (
        LlamaCppHttpAdapter(base_url, api_key=api_key) as adapter,
        adapter.submit(request) as events,
    ):
        async for event in events:
            if isinstance(event, Reasoning):
                if not thinking:
                    out.write(dim)
                    thinking = True
                out.write(event.text.translate(TERMINAL_SAFE))
            else:
                if thinking:
                    out.write(undim + "\n")
                    thinking = False
                if isinstance(event, Token):
                    out.write(event.text.translate(TERMINAL_SAFE))
                elif isinstance(event, ToolCall):
                    call = {"id": event.id, "name": event.name, "arguments": event.arguments}
                    out.write(json.dumps({"tool_call": call}, ensure_ascii=False) + "\n")
                elif isinstance(event, Metrics):  # optional: an engine may send no timings
                    engine = f" ({event.predicted_tokens_per_s:.1f} tokens/s in the engine)"
                elif isinstance(event, End):
                    rate = event.tokens_out / (time.perf_counter() - started)
                    out.write("\n")
                    click.echo(
                        f"-- {event.tokens_out} tokens, {rate:.1f} tokens/s received{engine}, "
                        f"stop: {event.stop_reason}"
                    )
            out.flush()
