"""What llama-server's two streams carry alike, as JSON and as events: the engine's
timings (:class:`Timings`, :func:`metrics_event`), an error in the stream
(:class:`ErrorBody`, :func:`raise_engine_error`) and the prompt's progress
(:class:`Progress`, :func:`progress_event`). Pure: the completion decoder and the chat
decoder decode their chunks with these."""

from __future__ import annotations

from typing import Protocol

import msgspec

from .._exceptions import EngineError
from .._types import Metrics, PromptProgress

__all__ = [
    "ErrorBody",
    "Progress",
    "Timings",
    "metrics_event",
    "progress_event",
    "raise_engine_error",
]


class Timings(msgspec.Struct, gc=False):
    """The engine's ``timings`` of one request."""

    prompt_n: int = 0
    prompt_ms: float = 0.0
    prompt_per_second: float = 0.0
    predicted_n: int = 0
    predicted_ms: float = 0.0
    predicted_per_second: float = 0.0
    cache_n: int | None = None


class ErrorBody(msgspec.Struct, gc=False):
    """An ``error`` object in the stream."""

    message: str = ""
    type: str | None = None
    code: int | None = None


class Progress(msgspec.Struct, gc=False):
    """The engine's ``prompt_progress`` (``return_progress``)."""

    total: int = 0
    cache: int = 0
    processed: int = 0
    time_ms: float = 0.0


class _Counts(Protocol):
    """Timings added up over several requests (they carry no rates of their own)."""

    prompt_n: int
    prompt_ms: float
    predicted_n: int
    predicted_ms: float
    cache_n: int | None


def metrics_event(timings: Timings | _Counts, *, cached: int | None = None) -> Metrics:
    """The engine's *timings* as a :class:`Metrics` event; the rates of timings added up
    over several requests are worked out from their counts and times. *cached* stands
    for the cached tokens the timings leave out."""
    if isinstance(timings, Timings):
        prompt_rate, predicted_rate = timings.prompt_per_second, timings.predicted_per_second
    else:
        prompt_rate = _rate(timings.prompt_n, timings.prompt_ms)
        predicted_rate = _rate(timings.predicted_n, timings.predicted_ms)
    return Metrics(
        prompt_tokens=timings.prompt_n,
        prompt_ms=timings.prompt_ms,
        prompt_tokens_per_s=prompt_rate,
        predicted_tokens=timings.predicted_n,
        predicted_ms=timings.predicted_ms,
        predicted_tokens_per_s=predicted_rate,
        cached_tokens=timings.cache_n if timings.cache_n is not None else cached,
    )


def progress_event(progress: Progress) -> PromptProgress:
    return PromptProgress(progress.total, progress.cache, progress.processed, progress.time_ms)


def raise_engine_error(error: ErrorBody | str) -> None:
    """Raise the :class:`EngineError` an ``error`` in the stream says."""
    if isinstance(error, str):
        raise EngineError(error)
    raise EngineError(error.message, error_type=error.type, engine_code=error.code)


def _rate(count: int, ms: float) -> float:
    return count * 1000.0 / ms if ms > 0 else 0.0
