"""The serving benchmark's figures, from what each request recorded: pure, no clock.

The names are those of vLLM's serving benchmark (``vllm bench serve``), so that results
compare across tools: ``completed``, ``total_output_tokens``, ``request_throughput``,
``mean_ttft_ms``, ``p99_itl_ms``, ... and they are computed as it computes them:

* TTFT: from sending the request to its first token;
* TPOT: per request, (latency - TTFT) / (output tokens - 1), for requests of more than
  one token;
* ITL: per token: each gap between one token event and the next, shared among the
  tokens the later event stands for (its count, from the engine's running
  ``tokens_predicted``: llama-server sends the tokens of an incomplete UTF-8 sequence
  at once), of every request; on the chat endpoint, which does not say, an event is one
  token;
* the chunk gap: every gap between one token event and the next, as it is (what vLLM
  calls ITL);
* E2EL: from sending the request to its end.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import msgspec

__all__ = [
    "DEFAULT_PERCENTILES",
    "RequestRecord",
    "cached_share",
    "percentile",
    "request_latencies",
    "summarize",
    "token_gaps_ms",
]

#: The percentiles reported for each latency, beside the mean.
DEFAULT_PERCENTILES = (50.0, 90.0, 99.0)


class RequestRecord(msgspec.Struct, frozen=True):
    """What one request of a run recorded (times in seconds, on the run's clock).

    Attributes:
        sent: when the request was sent.
        ended: when its stream ended, or it failed.
        input_tokens: the prompt's tokens.
        output_tokens: tokens generated (token ids, not events).
        first_token: when its first token came, or ``None``.
        gaps: the gaps between one token event and the next.
        counts: the tokens of the event that ended each gap, when any is more than one
            (else empty: one each).
        error: the error's code when it failed, else ``None``.
        turn: its turn in its conversation (1 the first), in a run of conversations.
        cached_tokens: the prompt's tokens the engine took from its cache, when it said.
        prompt_ms: the engine's time on the prompt (``Metrics.prompt_ms``): llama.cpp
            samples the first token from the prompt's last batch, so its first step is
            in it too.
        streamed_tokens: the tokens of the events it streamed, as the client counted
            them (``Token.count``), for a whole stream: its *output_tokens* (the
            server's count in its final chunk) less those of a character the limit cut
            off, which the engine counts and does not send (at most 3); more, or
            fewer, and an event was repeated or lost.
    """

    sent: float
    ended: float
    input_tokens: int
    output_tokens: int
    first_token: float | None = None
    gaps: tuple[float, ...] = ()
    error: str | None = None
    turn: int | None = None
    cached_tokens: int | None = None
    prompt_ms: float | None = None
    counts: tuple[int, ...] = ()
    streamed_tokens: int | None = None


def request_latencies(record: RequestRecord) -> dict[str, float]:
    """One request's latencies in ms, those it has: ``ttft`` (with a first token),
    ``tpot`` (with more than one token), ``itl`` (its longest gap, with a gap) and
    ``e2el``."""
    found = {"e2el": (record.ended - record.sent) * 1000}
    first = record.first_token
    if first is not None:
        found["ttft"] = (first - record.sent) * 1000
        if record.prompt_ms is not None:
            # The time to first token the engine did not spend on the prompt: waiting
            # for a slot, and the way there and back.
            found["prompt"] = record.prompt_ms
            found["wait"] = max(found["ttft"] - record.prompt_ms, 0.0)
        if record.output_tokens > 1:
            found["tpot"] = (record.ended - first) * 1000 / (record.output_tokens - 1)
    if record.gaps:
        found["itl"] = max(token_gaps_ms(record))
    return found


def token_gaps_ms(record: RequestRecord) -> list[float]:
    """The request's inter-token latencies in ms: each gap shared among the tokens of
    the event that ended it."""
    if not record.counts:
        return [gap * 1000 for gap in record.gaps]
    return [
        gap * 1000 / count
        for gap, count in zip(record.gaps, record.counts, strict=True)
        for _ in range(count)
    ]


def cached_share(records: Sequence[RequestRecord]) -> float:
    """Of the prompt tokens of the completed *records* whose engine said what it took
    from its cache, the share it took; NaN when none said."""
    told = [r for r in records if r.error is None and r.cached_tokens is not None]
    prompt = sum(r.input_tokens for r in told)
    return sum(r.cached_tokens or 0 for r in told) / prompt if prompt else math.nan


def percentile(values: Sequence[float], p: float) -> float:
    """The *p*-th percentile of *values* with linear interpolation between the closest
    ranks (NumPy's default, which vLLM's benchmark uses); NaN for none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _std(values: Sequence[float]) -> float:
    if not values:
        return math.nan
    mean = _mean(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def summarize(
    records: Sequence[RequestRecord],
    duration_s: float,
    *,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
) -> dict[str, float | int | dict[str, int]]:
    """The run's figures, by vLLM's names, from its *records* and its *duration_s*.

    Latencies are in milliseconds: ``mean_``, ``median_``, ``std_`` and ``p{N}_`` of
    ``ttft_ms``, ``tpot_ms``, ``itl_ms`` and ``e2el_ms`` (``p99.9`` is written
    ``p99.9``). Failed requests count in ``failed`` (and ``errors``, by code), not in
    the figures.
    """
    done = [r for r in records if r.error is None]
    each = [request_latencies(r) for r in done]
    ttfts = [latencies["ttft"] for latencies in each if "ttft" in latencies]
    tpots = [latencies["tpot"] for latencies in each if "tpot" in latencies]
    itls = [gap for r in done for gap in token_gaps_ms(r)]
    chunk_gaps = [gap * 1000 for r in done for gap in r.gaps]
    e2els = [latencies["e2el"] for latencies in each]
    total_input = sum(r.input_tokens for r in done)
    total_output = sum(r.output_tokens for r in done)
    errors = Counter(r.error for r in records if r.error is not None)
    rate = 1 / duration_s if duration_s > 0 else math.nan
    result: dict[str, float | int | dict[str, int]] = {
        "duration": duration_s,
        "completed": len(done),
        "failed": len(records) - len(done),
        "errors": dict(sorted(errors.items())),
        "total_input_tokens": total_input,
        "total_output_tokens": total_output,
        "request_throughput": len(done) * rate,
        "output_throughput": total_output * rate,
        "total_token_throughput": (total_input + total_output) * rate,
    }
    latencies = [
        ("ttft", ttfts),
        ("tpot", tpots),
        ("itl", itls),
        ("e2el", e2els),
        ("chunk_gap", chunk_gaps),
    ]
    if any("prompt" in found for found in each):
        for part in ("wait", "prompt"):
            latencies.append((part, [found[part] for found in each if part in found]))
    for name, values in latencies:
        result[f"mean_{name}_ms"] = _mean(values)
        result[f"median_{name}_ms"] = percentile(values, 50)
        result[f"std_{name}_ms"] = _std(values)
        for p in percentiles:
            result[f"p{p:g}_{name}_ms"] = percentile(values, p)
    return result
