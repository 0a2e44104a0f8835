"""An engine's error answer read as this library's error, sans-IO: the status, the reason
phrase, the headers and the body in, a :class:`WorkerError` out.

llama-server answers a failed request with a JSON body, ``{"error": {"code": 400,
"message": "...", "type": "exceed_context_size_error", "n_prompt_tokens": 3002,
"n_ctx": 256}}``; older builds and proxies send a string or no JSON at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Any

import msgspec

from .._exceptions import AdapterError, PromptTooLarge, WorkerError

__all__ = ["error_message", "json_or_none", "retry_after", "status_error"]

_CONTEXT_ERROR_TYPE = "exceed_context_size_error"


def status_error(
    status: int, reason: str, headers: Mapping[str, str], body: bytes, *, now: float
) -> WorkerError:
    """The error for a non-success answer: *status* and its *reason* phrase, *headers*
    (looked up by lower-case name), and as much of its *body* as was read; *now* is the
    wall clock's time, for a ``Retry-After`` given as a date."""
    parsed = json_or_none(body)
    message, error_type = error_message(parsed, reason)
    if error_type == _CONTEXT_ERROR_TYPE:
        error = parsed["error"]  # error_message found its type there
        return PromptTooLarge(
            f"the task does not fit the engine's context: {message}",
            prompt_tokens=_count(error.get("n_prompt_tokens")),
            context_size=_count(error.get("n_ctx")),
        )
    return AdapterError(
        f"the engine answered {status}: {message}",
        status=status,
        error_type=error_type,
        retry_after=retry_after(headers.get("retry-after"), now=now),
    )


def error_message(body: Any, reason: str) -> tuple[str, str | None]:
    """The message and the error type in an error answer's decoded *body*; the status
    line's *reason* when the body has none."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        message = error.get("message")
        error_type = error.get("type")
        return (
            str(message) if message is not None else reason,
            error_type if isinstance(error_type, str) else None,
        )
    if isinstance(error, str):
        return error, None
    return reason or "no message", None


def retry_after(value: str | None, *, now: float) -> float | None:
    """The seconds a ``Retry-After`` header asks to wait (a count, or a date, from the
    wall clock's *now*); None when there is none, or it is not one of those."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def json_or_none(content: bytes) -> Any:
    """*content* decoded as JSON; None when it is not JSON (or nested past the bound)."""
    try:
        return msgspec.json.decode(content)
    except (msgspec.DecodeError, RecursionError):
        return None


def _count(value: Any) -> int | None:
    """*value* when it is a count (a JSON integer, not negative), else None."""
    return value if type(value) is int and value >= 0 else None
