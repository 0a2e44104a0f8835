"""The prompts of a run: synthetic ones of exact token counts, from the server's own
tokenizer, or those of a JSONL file, each counted by the server; and the conversations
of a multi-turn run, synthetic or from a file."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import anyio

from .._adapter import LlamaCppHttpAdapter
from ._config import BenchConfig
from ._conversations import Conversation, parse_conversations

__all__ = ["Prompt", "make_conversations", "make_prompts"]

#: The text whose tokens make up synthetic prompts (cut or repeated to each length).
SEED_TEXT = (
    "The quick brown fox jumps over the lazy dog while the model server answers every "
    "request that the benchmark sends, one token after another, as fast as it can."
)


@dataclass(frozen=True)
class Prompt:
    """One request's prompt (text or token ids), its tokens, and its output length.
    A chat's prompt is text, the user's turn."""

    prompt: str | tuple[int, ...]
    input_tokens: int
    max_tokens: int


async def make_prompts(config: BenchConfig, adapter: LlamaCppHttpAdapter) -> list[Prompt]:
    """The run's prompts, the warm-up's first."""
    count = config.warmup + (config.requests if config.requests is not None else 100_000)
    if config.prompts_file is not None:
        return await _file_prompts(config.prompts_file, adapter, count, config.output_tokens)
    seed_ids = await adapter.tokenize(SEED_TEXT)
    pieces = await _pieces(adapter, seed_ids) if config.endpoint == "chat" else []
    rng = random.Random(config.seed)
    low, high = config.input_tokens

    # Each shared beginning the seed text's tokens in an order of its own.
    prefixes = []
    for group in range(config.prefix_groups):
        draw = random.Random(f"prefix {config.seed} {group}")
        prefixes.append([draw.randrange(len(seed_ids)) for _ in range(config.prefix_tokens)])
    prompts = []
    for number in range(count):
        length = rng.randint(low, high)
        prefix = prefixes[rng.randrange(len(prefixes))] if config.prefix_tokens else []
        # The seed text's tokens from a different place for each request, so that no
        # request finds another's prompt in the server's cache (but for its prefix).
        at = prefix + _positions(number, length, len(seed_ids))
        prompt = "".join(pieces[k] for k in at) if pieces else tuple(seed_ids[k] for k in at)
        prompts.append(Prompt(prompt, len(at), config.output_tokens))
    return prompts


async def make_conversations(
    config: BenchConfig, adapter: LlamaCppHttpAdapter
) -> list[Conversation]:
    """The run's conversations, the warm-up's first: a file's, in order and repeated to
    the count, or synthetic ones whose messages are *turn_tokens* tokens of text each
    (each token's own text, from a different place of the seed text for each message)."""
    count = config.warmup + (config.requests if config.requests is not None else 10_000)
    if config.conversations_file is not None:
        path = config.conversations_file
        text = await anyio.Path(path).read_text(encoding="utf-8")
        distinct = parse_conversations(text, str(path))
        return [distinct[n % len(distinct)] for n in range(count)]
    assert config.turns is not None
    pieces = await _pieces(adapter, await adapter.tokenize(SEED_TEXT))
    made = []
    for number in range(count):
        turns = []
        for turn in range(config.turns):
            start = (number * config.turns + turn) * 7
            at = _positions(start, config.turn_tokens, len(pieces))
            turns.append("".join(pieces[k] for k in at))
        made.append(Conversation(tuple(turns)))
    return made


def _positions(start: int, length: int, size: int) -> list[int]:
    """*length* positions in the seed text's *size* tokens from *start*, round and round."""
    return [(start + k) % size for k in range(length)]


async def _pieces(adapter: LlamaCppHttpAdapter, ids: list[int]) -> list[str]:
    """Each token's own text: a chat's turn is text, which the chat template may
    tokenize a little otherwise (the server counts a chat's input tokens)."""
    return [await adapter.detokenize([i]) for i in ids]


async def _file_prompts(
    path: Path, adapter: LlamaCppHttpAdapter, count: int, output_tokens: int
) -> list[Prompt]:
    """The prompts of a JSONL file, in order and repeated to *count*, each counted by
    the server's tokenizer."""
    content = await anyio.Path(path).read_text(encoding="utf-8")
    lines = [line for line in content.splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{path}: no prompts")
    distinct: list[Prompt] = []
    for number, line in enumerate(lines, 1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not JSON: {exc.msg}") from None
        text = entry.get("prompt") if isinstance(entry, dict) else None
        if not isinstance(text, str) or not text:
            raise ValueError(f'{path}:{number}: no "prompt" text')
        wanted = entry.get("max_tokens", output_tokens)
        if not isinstance(wanted, int) or wanted < 1:
            raise ValueError(f"{path}:{number}: max_tokens must be a positive integer")
        distinct.append(Prompt(text, len(await adapter.tokenize(text)), wanted))
    return [distinct[n % len(distinct)] for n in range(count)]
