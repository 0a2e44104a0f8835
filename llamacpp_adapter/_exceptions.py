"""The errors this library raises: one hierarchy, after the orchestrator's own taxonomy.

::

    WorkerError                  code            retriable
    ├── AdapterError             ADAPTER_ERROR   429 and 5xx
    ├── PoolUnavailable          POOL_UNAVAILABLE
    │   └── PromptTooLarge       POOL_UNAVAILABLE
    ├── DeadlineUnmet            DEADLINE_UNMET
    ├── DecodeTimeout            DECODE_TIMEOUT  yes
    ├── WorkerReset              WORKER_RESET    yes
    ├── ProtocolError            PROTOCOL_ERROR
    ├── EngineError              ENGINE_ERROR
    ├── JobCancelled             JOB_CANCELLED
    └── InternalError            INTERNAL_ERROR

Every message passes :func:`redact_secrets` before it is stored, so neither ``str()`` nor
``repr()`` of an error can show a registered secret or a credential of a known shape.
``retriable`` says whether the same task may succeed if sent again (the caller still
decides: after the first token, nothing is retried).
"""

from __future__ import annotations

from typing import Any, ClassVar

from ._redact import redact_secrets

__all__ = [
    "AdapterError",
    "DeadlineUnmet",
    "DecodeTimeout",
    "EngineError",
    "InternalError",
    "JobCancelled",
    "PoolUnavailable",
    "PromptTooLarge",
    "ProtocolError",
    "WorkerError",
    "WorkerReset",
]


class WorkerError(Exception):
    """Root of every error raised by this library.

    Attributes:
        code: a stable string naming the kind of failure, e.g. ``"POOL_UNAVAILABLE"``.
        retriable: whether sending the same task again may succeed.
        message: the redacted message.
    """

    code: ClassVar[str] = "WORKER_ERROR"
    default_retriable: ClassVar[bool] = False

    def __init__(self, message: str, *, retriable: bool | None = None) -> None:
        self.message = redact_secrets(str(message))
        self.retriable = self.default_retriable if retriable is None else retriable
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only arguments do not survive Exception's default pickling, and
        # errors cross process boundaries in worker pools.
        return (_rebuild, (type(self), self.__dict__.copy()))


def _rebuild(cls: type[WorkerError], state: dict[str, Any]) -> WorkerError:
    error = cls.__new__(cls)
    Exception.__init__(error, state["message"])
    error.__dict__.update(state)
    return error


class AdapterError(WorkerError):
    """The engine answered with a non-success HTTP status.

    Attributes:
        status: the HTTP status code.
        error_type: the engine's own name for the error (e.g.
            ``"exceed_context_size_error"``), or ``None`` when it gave none.
        retry_after: seconds the engine asked to wait before trying again
            (``Retry-After``), or ``None``.
    """

    code = "ADAPTER_ERROR"

    def __init__(
        self,
        message: str,
        *,
        status: int,
        error_type: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, retriable=status == 429 or 500 <= status <= 599)
        self.status = status
        self.error_type = None if error_type is None else redact_secrets(error_type)
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, status={self.status}, "
            f"error_type={self.error_type!r})"
        )


class PoolUnavailable(WorkerError):
    """The task cannot be placed: it does not fit (e.g. its prompt exceeds the context),
    or no replica can take it. Raised at once, never after waiting without bound."""

    code = "POOL_UNAVAILABLE"


class PromptTooLarge(PoolUnavailable):
    """The task does not fit the context: the engine said so, or the host knows no
    replica of the pool with a context large enough. A host that hears it from one
    replica tries a replica with a larger context, if its pool has one.

    Attributes:
        prompt_tokens: the prompt's tokens, when known.
        context_size: the context it did not fit (tokens per slot), when known.
    """

    def __init__(
        self, message: str, *, prompt_tokens: int | None = None, context_size: int | None = None
    ) -> None:
        super().__init__(message)
        self.prompt_tokens = prompt_tokens
        self.context_size = context_size


class DeadlineUnmet(WorkerError):
    """The task's overall deadline passed before its stream ended."""

    code = "DEADLINE_UNMET"


class DecodeTimeout(WorkerError):
    """No data arrived from the engine within the read timeout."""

    code = "DECODE_TIMEOUT"
    default_retriable = True


class WorkerReset(WorkerError):
    """The connection to the engine was cut, or closed before the stream's final chunk."""

    code = "WORKER_RESET"
    default_retriable = True


class ProtocolError(WorkerError):
    """The engine sent something this library cannot read: bad SSE, bad JSON, an event
    over the size bound, or token indices out of order."""

    code = "PROTOCOL_ERROR"


class EngineError(WorkerError):
    """The engine reported an error inside an open stream.

    Attributes:
        error_type: the engine's own name for the error, or ``None``.
        engine_code: the numeric code the engine gave, or ``None``.
    """

    code = "ENGINE_ERROR"

    def __init__(
        self, message: str, *, error_type: str | None = None, engine_code: int | None = None
    ) -> None:
        super().__init__(message)
        self.error_type = None if error_type is None else redact_secrets(error_type)
        self.engine_code = engine_code


class JobCancelled(WorkerError):
    """The stream was ended by ``cancel(job_id)``."""

    code = "JOB_CANCELLED"


class InternalError(WorkerError):
    """A fault inside this library; please report it."""

    code = "INTERNAL_ERROR"
