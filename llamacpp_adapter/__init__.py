"""Drive llama.cpp's HTTP server from Trio and asyncio: typed, ordered token streams."""

import importlib
from typing import TYPE_CHECKING, Any

from ._adapter import LlamaCppHttpAdapter
from ._exceptions import (
    AdapterError,
    DeadlineUnmet,
    DecodeTimeout,
    EngineError,
    InternalError,
    JobCancelled,
    PoolUnavailable,
    PromptTooLarge,
    ProtocolError,
    WorkerError,
    WorkerReset,
)
from ._host import AdapterHost
from ._host_stream import HostStream
from ._mapping import CompletionStreamDecoder, completion_body
from ._metrics import HostMetrics
from ._receive import EventReceiveStream
from ._replica import ReplicaStatus
from ._retry import RetryPolicy
from ._sse import SSEDecoder, SSEEvent
from ._stream import EventStream
from ._task_form import JobItem, JobItemReceiveStream, JobItemSendStream, create_job_channel
from ._types import (
    End,
    Metrics,
    Started,
    TaskRequest,
    Token,
    TokenEvent,
    WorkerHealth,
    WorkerProps,
)
from .http_util import default_client, redact_secrets, register_secret, stream_decode, with_bearer

if TYPE_CHECKING:
    from ._relay_client import RelayStream, open_relay_stream
    from ._relay_server import Relay

__version__ = "0.1.0"

#: Names imported when first used: the relay brings trio-websocket, which a program that
#: only streams (on asyncio, say) need not load.
_LAZY = {
    "Relay": "._relay_server",
    "RelayStream": "._relay_client",
    "open_relay_stream": "._relay_client",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "AdapterError",
    "AdapterHost",
    "CompletionStreamDecoder",
    "DeadlineUnmet",
    "DecodeTimeout",
    "End",
    "EngineError",
    "EventReceiveStream",
    "EventStream",
    "HostMetrics",
    "HostStream",
    "InternalError",
    "JobCancelled",
    "JobItem",
    "JobItemReceiveStream",
    "JobItemSendStream",
    "LlamaCppHttpAdapter",
    "Metrics",
    "PoolUnavailable",
    "PromptTooLarge",
    "ProtocolError",
    "Relay",
    "RelayStream",
    "ReplicaStatus",
    "RetryPolicy",
    "SSEDecoder",
    "SSEEvent",
    "Started",
    "TaskRequest",
    "Token",
    "TokenEvent",
    "WorkerError",
    "WorkerHealth",
    "WorkerProps",
    "WorkerReset",
    "completion_body",
    "create_job_channel",
    "default_client",
    "open_relay_stream",
    "redact_secrets",
    "register_secret",
    "stream_decode",
    "with_bearer",
]
