"""What a run of the serving benchmark sends: :class:`BenchConfig`."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._load import Load
from ._slo import DEFAULT_ATTAINMENT, Objective

__all__ = ["ENDPOINTS", "BenchConfig"]

#: What a run may send: llama.cpp's native completion, or the chat endpoint (each prompt
#: a user's turn, through the model's chat template).
ENDPOINTS = ("completion", "chat")


@dataclass(frozen=True)
class BenchConfig:
    """What a run sends.

    Attributes:
        urls: the servers (more than one: a pool of an :class:`AdapterHost`).
        load: a closed loop (``concurrency``) or an open one (``rate``).
        requests: how many requests to measure (with *duration_s*: whichever ends first).
        duration_s: how long to send requests for.
        warmup: requests sent first and not counted.
        input_tokens: the synthetic prompts' lengths in tokens: ``(low, high)``, drawn
            evenly (``low == high``: fixed).
        output_tokens: tokens each request generates (``ignore_eos``, so exact).
        prompts_file: a JSONL file of prompts (``{"prompt": "...", "max_tokens": N}``,
            ``max_tokens`` optional) instead of synthetic ones.
        turns: a run of synthetic conversations of this many turns each: *requests* and
            *warmup* then count conversations, the load's concurrency (or rate) too, and
            each turn sends the conversation so far with its conversation's ``session``
            key (a pool places it by it).
        turn_tokens: the tokens of each of the user's messages of a synthetic
            conversation.
        think_time_s: the time between a turn's answer and the conversation's next turn.
        prefix_tokens: synthetic prompts that begin with one of *prefix_groups* shared
            beginnings of this many tokens (a system prompt, a document), each followed
            by the request's own *input_tokens*.
        prefix_groups: how many shared beginnings, each request's drawn at random.
        conversations_file: a run of the conversations of a file instead
            (``_conversations.parse_conversations``: ShareGPT's JSON, or JSONL of
            ``{"turns": [...]}``).
        api_key: the servers' API key.
        seed: the seed of the lengths and the arrivals.
        sample_server: whether to read the servers' slots and queue during the run (a
            worker of a run in several processes leaves it to the run).
        extra: further fields of every request's body.
        endpoint: ``"completion"`` (``POST /completion``) or ``"chat"`` (``POST
            /v1/chat/completions``, each prompt a user's turn; its input tokens are
            then those the server counts, the chat template's included).
        objectives: service level objectives (:func:`~._slo.parse_objectives`): the
            result then has the run's goodput and whether it met them.
        attainment: the share of requests that must meet the requests' objectives for
            the run to meet them.
        read_timeout_s: the longest wait for a server's next bytes, after which a
            request fails (``DECODE_TIMEOUT``); ``None``: the adapter's (60 s).
    """

    urls: tuple[str, ...]
    load: Load
    requests: int | None = 100
    duration_s: float | None = None
    warmup: int = 1
    input_tokens: tuple[int, int] = (32, 32)
    output_tokens: int = 64
    prompts_file: Path | None = None
    api_key: str | None = None
    seed: int = 0
    sample_server: bool = True
    extra: Mapping[str, Any] = field(default_factory=dict)
    endpoint: str = "completion"
    objectives: tuple[Objective, ...] = ()
    attainment: float = DEFAULT_ATTAINMENT
    turns: int | None = None
    turn_tokens: int = 100
    think_time_s: float = 0.0
    conversations_file: Path | None = None
    prefix_tokens: int = 0
    prefix_groups: int = 1
    read_timeout_s: float | None = None

    @property
    def conversational(self) -> bool:
        """Whether the run sends conversations, turn after turn."""
        return self.turns is not None or self.conversations_file is not None

    def __post_init__(self) -> None:
        if not self.urls:
            raise ValueError("give at least one server URL")
        if self.requests is None and self.duration_s is None:
            raise ValueError("give a number of requests or a duration")
        if self.requests is not None and self.requests < 1:
            raise ValueError("the number of requests must be at least 1")
        if self.duration_s is not None and not 0 < self.duration_s < math.inf:
            raise ValueError("the duration must be positive and finite")
        if self.warmup < 0:
            raise ValueError("the warm-up must not be negative")
        low, high = self.input_tokens
        if not 1 <= low <= high:
            raise ValueError("input lengths must be at least 1, the low one first")
        if self.output_tokens < 1:
            raise ValueError("the output length must be at least 1")
        if self.endpoint not in ENDPOINTS:
            raise ValueError(f"the endpoint must be one of {', '.join(ENDPOINTS)}")
        if not 0 < self.attainment <= 1:
            raise ValueError("the SLO attainment must be in (0, 1]")
        if self.turns is not None and self.turns < 1:
            raise ValueError("a conversation has at least 1 turn")
        if self.turn_tokens < 1:
            raise ValueError("a turn has at least 1 token")
        if not 0 <= self.think_time_s < math.inf:
            raise ValueError("the think time must be a finite number of seconds, not negative")
        if self.read_timeout_s is not None and not 0 < self.read_timeout_s < math.inf:
            raise ValueError("the read timeout must be positive and finite")
        if self.prefix_tokens < 0 or self.prefix_groups < 1:
            raise ValueError("the prefix is at least 0 tokens, in at least 1 group")
        if self.prefix_tokens and (self.prompts_file or self.conversational):
            raise ValueError("shared prefixes go with synthetic prompts")
        sources = [self.prompts_file, self.conversations_file, self.turns]
        if sum(source is not None for source in sources) > 1:
            raise ValueError("give one of prompts, conversations and turns")
