"""The conversations of a multi-turn run: read from a file (ShareGPT's JSON layout, or
JSONL of ``{"turns": [...]}``), and the figures of each turn. Pure: no I/O but the
text it is given.

A conversation here is the user's messages, in order: the model's answers are the
ones it gives during the run (a file's own answers are not sent), so that each turn
sends the conversation so far as the server would see it in use.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ._stats import RequestRecord, cached_share, percentile, request_latencies

__all__ = ["Conversation", "parse_conversations", "per_turn"]

#: ShareGPT's names of the user's side of a conversation.
_USER = ("human", "user")
#: ShareGPT's names of the model's side (its answers, which the run makes anew).
_MODEL = ("gpt", "assistant", "model", "chatgpt", "bing", "bard")


@dataclass(frozen=True)
class Conversation:
    """The user's messages of one conversation, in order."""

    turns: tuple[str, ...]


def parse_conversations(text: str, source: str) -> list[Conversation]:
    """The conversations of a file's *text* (*source* names it in errors): ShareGPT's
    JSON (a list of ``{"conversations": [{"from": "human"|"gpt", "value": ...}]}``) when
    it begins with ``[``, else JSONL, a ``{"turns": ["...", ...]}`` a line.

    Raises:
        ValueError: one line naming the file and where: not JSON, another layout, an
            empty conversation (no message of the user's), a message that is not text.
    """
    if not text.strip():
        raise ValueError(f"{source}: no conversations")
    if text.lstrip().startswith("["):
        try:
            entries = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{source}: not JSON: {exc.msg} (line {exc.lineno})") from None
        return [
            _sharegpt(entry, f"{source}: conversation {n}") for n, entry in enumerate(entries, 1)
        ]
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{source}:{number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not JSON: {exc.msg}") from None
        turns = entry.get("turns") if isinstance(entry, dict) else None
        if not isinstance(turns, list):
            raise ValueError(f'{where}: not a {{"turns": ["...", ...]}} line')  # noqa: TRY004 - a file's layout
        found.append(_conversation(turns, where))
    return found


def _sharegpt(entry: Any, where: str) -> Conversation:
    messages = entry.get("conversations") if isinstance(entry, dict) else None
    if not isinstance(messages, list):
        raise ValueError(f'{where}: not {{"conversations": [{{"from": ..., "value": ...}}]}}')  # noqa: TRY004
    turns = []
    for n, message in enumerate(messages, 1):
        side = message.get("from") if isinstance(message, dict) else None
        if side in _USER:
            turns.append(message.get("value"))
        elif side not in _MODEL:
            raise ValueError(f'{where}, message {n}: "from" is not one of {", ".join(_USER)}')
    return _conversation(turns, where)


def _conversation(turns: Sequence[Any], where: str) -> Conversation:
    if not turns:
        raise ValueError(f"{where}: an empty conversation (no message of the user's)")
    for n, turn in enumerate(turns, 1):
        if not isinstance(turn, str) or not turn:
            raise ValueError(f"{where}: turn {n} is not text")
    return Conversation(tuple(turns))


def per_turn(records: Sequence[RequestRecord]) -> list[dict[str, float | int]]:
    """The figures of each turn of the conversations of *records* (those with a turn),
    by turn (1 the first): its requests, TTFT's mean, median and 99th percentile, and
    the share of its prompts' tokens the engine took from cache (when it said)."""
    by_turn: dict[int, list[RequestRecord]] = defaultdict(list)
    for record in records:
        if record.turn is not None and record.error is None:
            by_turn[record.turn].append(record)
    rows: list[dict[str, float | int]] = []
    for turn in sorted(by_turn):
        done = by_turn[turn]
        ttfts = [v for r in done if (v := request_latencies(r).get("ttft")) is not None]
        rows.append(
            {
                "turn": turn,
                "requests": len(done),
                "mean_ttft_ms": sum(ttfts) / len(ttfts) if ttfts else math.nan,
                "median_ttft_ms": percentile(ttfts, 50),
                "p99_ttft_ms": percentile(ttfts, 99),
                "cached_share": cached_share(done),
            }
        )
    return rows
