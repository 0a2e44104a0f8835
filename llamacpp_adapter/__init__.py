"""Drive llama.cpp's HTTP server from Trio and asyncio: typed, ordered token streams."""

import importlib
import warnings
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
from ._host.prefixes import PrefixPolicy
from ._host.retry import GiveUp, RetryDecision, RetryLater, RetryPolicy, TryLargerContext
from ._pause import PausePolicy
from ._receive import EventReceiveStream, StreamState
from ._relay.throttle import TokenThrottle
from ._sansio.completion import CompletionStreamDecoder, completion_body
from ._sansio.sse import SSEDecoder, SSEEvent
from ._stream import EventStream
from ._task_form import JobItem, JobItemReceiveStream, JobItemSendStream, create_job_channel
from ._types import (
    ChatRequest,
    End,
    Metrics,
    PromptProgress,
    Reasoning,
    SlotUse,
    Started,
    StreamEvent,
    TaskRequest,
    Token,
    ToolCall,
    ToolCallDelta,
    WorkerHealth,
    WorkerProps,
)
from .http_util import default_client, redact_secrets, register_secret, stream_decode, with_bearer

if TYPE_CHECKING:
    from ._host.host import AdapterHost
    from ._host.metrics import HostMetrics
    from ._host.replica import ReplicaStatus
    from ._host.stream import HostStream
    from ._relay.client import RelayStream, open_relay_stream
    from ._relay.server import Relay

__version__ = "0.1.0"

#: Names imported when first used: the host brings prometheus_client (its metrics), the
#: relay and its client wsproto, which a program that only streams need not load.
_LAZY = {
    "AdapterHost": "._host.host",
    "HostStream": "._host.stream",
    "HostMetrics": "._host.metrics",
    "ReplicaStatus": "._host.replica",
    "Relay": "._relay.server",
    "RelayStream": "._relay.client",
    "open_relay_stream": "._relay.client",
}


#: Names renamed, still imported under the old one with a warning.
_RENAMED = {"TokenEvent": "StreamEvent"}


def __getattr__(name: str) -> Any:
    if name in _RENAMED:
        warnings.warn(f"{name} is now {_RENAMED[name]}", DeprecationWarning, stacklevel=2)
        return globals()[_RENAMED[name]]
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "AdapterError",
    "AdapterHost",
    "ChatRequest",
    "CompletionStreamDecoder",
    "DeadlineUnmet",
    "DecodeTimeout",
    "End",
    "EngineError",
    "EventReceiveStream",
    "EventStream",
    "GiveUp",
    "HostMetrics",
    "HostStream",
    "InternalError",
    "JobCancelled",
    "JobItem",
    "JobItemReceiveStream",
    "JobItemSendStream",
    "LlamaCppHttpAdapter",
    "Metrics",
    "PausePolicy",
    "PoolUnavailable",
    "PrefixPolicy",
    "PromptProgress",
    "PromptTooLarge",
    "ProtocolError",
    "Reasoning",
    "Relay",
    "RelayStream",
    "ReplicaStatus",
    "RetryDecision",
    "RetryLater",
    "RetryPolicy",
    "SSEDecoder",
    "SSEEvent",
    "SlotUse",
    "Started",
    "StreamEvent",
    "StreamState",
    "TaskRequest",
    "Token",
    "TokenThrottle",
    "ToolCall",
    "ToolCallDelta",
    "TryLargerContext",
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
