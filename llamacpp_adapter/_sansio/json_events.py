"""Server-Sent Events whose data is a JSON object each, decoded a run at a time, sans-IO:
:class:`JsonEventReader`.

llama-server writes every chunk of a stream, on ``/completion`` as on
``/v1/chat/completions``, as one ``data: {json}`` line and a blank line. A run of such
events, its separators joined by CR (which no JSON string holds bare), is a run of JSON
documents that one ``msgspec`` call decodes: a read is decoded whole, and its events
handed on a slice at a time. Anything else (comments, other fields, CR
line ends, a BOM, a non-object payload such as the chat's ``[DONE]``, the ``error:``
field of older builds) goes through :class:`SSEDecoder` and its WHATWG rules, with the
same events as the result.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import msgspec

from .._exceptions import ProtocolError, WorkerError, WorkerReset
from .._types import StreamEvent
from .sse import SSEDecoder, SSEEvent

__all__ = ["UNLIMITED", "JsonEventReader", "JsonStreamDecoder"]

T = TypeVar("T")
E = TypeVar("E")

#: No bound on the events :meth:`JsonEventReader.read` hands on.
UNLIMITED = sys.maxsize

_OBJECT_EVENT_PREFIX = b"data: {"
_DATA_PREFIX_BYTES = len(b"data: ")
_OBJECT_SEPARATOR = b"}\n\ndata: {"
_OBJECT_JOINER = b"}\r{"
_LEGACY_ERROR = re.compile(rb"(?m)^error: ?(.*)$")


class JsonEventReader(Generic[T, E]):
    """Find the whole events in the bytes of an event stream and hand them on, a slice
    at a time: as a list of objects of the *decoder*'s type for a run of ``data:
    {json}`` events that decodes, else as each event's data, one at a time.

    Memory is bounded as the stream's is: what it holds, decoded or not, is what was
    received and not yet handed on, and an event over *max_event_bytes* is a
    :class:`ProtocolError`.

    Args:
        decoder: decodes one event's JSON object.
        max_event_bytes: the bound on one event.
    """

    __slots__ = (
        "_at",
        "_decoder",
        "_error",
        "_max_event_bytes",
        "_partial",
        "_ready",
        "_skip_lf",
        "_sse",
        "_start",
        "_tail",
    )

    def __init__(self, decoder: msgspec.json.Decoder[T], *, max_event_bytes: int) -> None:
        self._decoder = decoder
        self._sse = SSEDecoder(max_event_bytes)
        self._max_event_bytes = max_event_bytes
        self._tail = b""  # what was received, split into events up to _start
        self._start = 0
        self._skip_lf = False  # the last read ended with CR: an LF that follows is its end
        self._partial = False  # the SSE decoder holds part of an event: it takes all
        # The events found and not handed on, in order: runs of decoded objects (True)
        # or of events' data (False); the first is handed on from _at.
        # A list, not a deque: it holds a run or two, and a deque's first block (64
        # slots) would cost every open stream 600 bytes more.
        self._ready: list[tuple[bool, list[Any]]] = []
        self._at = 0
        self._error: ProtocolError | None = None  # found after the events ready

    def receive_data(self, data: bytes) -> None:
        """Take the next bytes of the stream; :meth:`read` hands them on."""
        if not data:
            return
        if self._skip_lf or b"\r" in data:
            # CR and CRLF end lines as LF does: once they are LF, a run of events is
            # found by its blank lines alone.
            if self._skip_lf and data[0] == 0x0A:
                data = data[1:]
            self._skip_lf = data[-1:] == b"\r"
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        tail, start = self._tail, self._start
        self._tail = tail[start:] + data if start < len(tail) else data
        self._start = 0

    def read(
        self,
        limit: int,
        events: list[E],
        take_objects: Callable[[list[T], list[E]], None],
        take_data: Callable[[str, list[E]], None],
    ) -> None:
        """Hand on the next *limit* events received at most, going on past slices that
        add nothing to *events*; with :data:`UNLIMITED`, every whole event received.

        Args:
            limit: the most events to hand on, when they add to *events*.
            events: the events the caller is making, which the callbacks add to.
            take_objects: given a run's decoded objects, in order, and *events*.
            take_data: given the data of an event that was not decoded in a run (it
                may not be JSON at all), and *events*.

        Raises:
            ProtocolError: an event over the bound; and what the callbacks raise.
        """
        ready = self._ready
        while not events or limit == UNLIMITED:
            if not ready:
                if self._error is not None:
                    raise self._error
                try:
                    if self._find():
                        continue
                except ProtocolError as exc:
                    self._error = exc  # raised once the events before it are handed on
                    continue
                return
            decoded, items = ready[0]
            at = self._at
            stop = min(at + limit, len(items)) if limit != UNLIMITED else len(items)
            if stop == len(items):
                del ready[0]
                self._at = 0
            else:
                self._at = stop
            part = items if at == 0 and stop == len(items) else items[at:stop]
            if decoded:
                take_objects(part, events)
            else:
                for data in part:
                    take_data(data, events)

    def close(self) -> None:
        """End the stream: an unterminated last event is dropped, as WHATWG says.

        Raises:
            ProtocolError: the SSE decoder broke the bound earlier.
        """
        self._tail, self._start = b"", 0
        self._ready.clear()
        if self._error is not None:
            raise self._error
        self._sse.close()

    def _find(self) -> bool:
        """Find the whole events received and not yet found; whether any bytes were
        taken (perhaps with no event: a comment, or part of an event)."""
        tail, start = self._tail, self._start
        if self._partial:
            # The end of the event the SSE decoder holds part of.
            end = tail.find(b"\n\n", start)
            if end >= 0:
                self._start = end + 2
                self._take_sse(self._sse.feed(tail[start : end + 2]))
                self._partial = not self._sse.at_event_boundary
                return True
        else:
            end = tail.rfind(b"\n\n", start)
            if end >= 0:
                self._start = end + 2
                self._take_run(tail, start, end)
                return True
        if len(tail) - start >= (1 if self._partial else self._max_event_bytes):
            # An event this long (or one the SSE decoder holds part of): the SSE
            # decoder judges it by its rules, and holds what it is given.
            self._tail, self._start = b"", 0
            self._partial = True
            self._take_sse(self._sse.feed(tail[start:]))
            return True
        return False

    def _take_run(self, tail: bytes, start: int, end: int) -> None:
        """Take ``tail[start:end]``, whole events without their last blank line and with
        no CR, in pieces shorter than the bound (so is each of their events)."""
        bound = self._max_event_bytes
        while end - start >= bound:
            cut = tail.rfind(b"\n\n", start, start + bound)
            if cut < 0:
                break  # an event over the bound: the SSE decoder says so
            self._take_events(tail[start:cut])
            start = cut + 2
        self._take_events(tail[start:end])

    def _take_events(self, run: bytes) -> None:
        if run[-1:] != b"}" and run.startswith(_OBJECT_EVENT_PREFIX):
            # A last event of another kind (the chat's [DONE]): the ones before it may
            # be a run of objects.
            last = run.rfind(b"\n\n")
            if last > 0:
                self._take_objects_or_sse(run[:last])
                run = run[last + 2 :]
        self._take_objects_or_sse(run)

    def _take_objects_or_sse(self, run: bytes) -> None:
        if (
            run.startswith(_OBJECT_EVENT_PREFIX)
            and run[-1:] == b"}"
            and len(run) < self._max_event_bytes
            and self._sse.at_event_boundary
        ):
            # Split and joined again: bytes.replace, which does the same, takes half as
            # long again.
            payloads = run.split(_OBJECT_SEPARATOR)
            payloads[0] = payloads[0][_DATA_PREFIX_BYTES:]
            joined = _OBJECT_JOINER.join(payloads)
            # With no LF left once the separators are joined by CR, the run is one-line
            # events, one JSON object each, one for each piece.
            if b"\n" not in joined:
                self._take_joined(joined, len(payloads))
                return
        if b"error:" in run:
            # Older builds wrote a failure as an "error:" field, which the standard
            # ignores; newer ones write it in data, and that is how it is read.
            run = _LEGACY_ERROR.sub(rb'data: {"error":\1}', run)
        self._take_sse(self._sse.feed(run + b"\n\n"))

    def _take_sse(self, sse_events: list[SSEEvent]) -> None:
        data = [event.data for event in sse_events if event.event == "message"]
        if data:
            self._ready.append((False, data))

    def _take_joined(self, run: bytes, count: int) -> None:
        # A run is *count* payloads joined by CR, none holding a CR or LF, each starting
        # with "{" and ending with "}". If the whole decodes as that many JSON values
        # (decode_lines takes any whitespace between them), each payload is exactly one
        # JSON value: a value spanning two payloads would have to follow a closing "}"
        # with "{" inside a container, which JSON forbids, and a string cannot hold a
        # bare CR.
        decoder = self._decoder
        try:
            objects = [decoder.decode(run)] if count == 1 else decoder.decode_lines(run)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            pass  # handed on one at a time, to find which payload is bad
        else:
            if len(objects) == count:
                self._ready.append((True, objects))
                return
        self._ready.append((False, [part.decode("utf-8", "replace") for part in run.split(b"\r")]))


class JsonStreamDecoder(Generic[T]):
    """Turn the bytes of one of llama-server's streams into events, with a
    :class:`JsonEventReader`: the part both stream decoders share. Two ways to drive it:

    * :meth:`feed` takes a read and returns every event it completes;
    * :meth:`receive_data` takes a read, and :meth:`next_events` returns the events of
      the next *limit* chunks of what was received (``[]``: it needs more), so that a
      reader holds no more than it means to however many events one read brings.

    A fault costs no event: when a call completes events before a fault, those events
    are returned, the fault is kept in :attr:`error`, and the next call raises it.

    A decoder maps the chunks to events (:meth:`_take_chunks`, the decoded ones of a
    run; :meth:`_take_data`, an event's data not decoded with a run), counting its
    tokens in ``_next_i`` and setting ``_finished`` once the stream's last event came.

    Args:
        decoder: decodes one chunk.
        max_event_bytes: the bound on one event.
        first_i: the ``i`` of the first token (a stream resumed goes on from its count).

    Attributes:
        error: the fault that ended the stream, once one has; the next call raises it.
    """

    __slots__ = ("_finished", "_next_i", "_reader", "error")

    #: What a :class:`WorkerReset` says when the stream ends before its last event.
    _CUT = "the stream ended before its last event"

    def __init__(
        self, decoder: msgspec.json.Decoder[T], *, max_event_bytes: int, first_i: int = 0
    ) -> None:
        self._reader: JsonEventReader[T, StreamEvent] = JsonEventReader(
            decoder, max_event_bytes=max_event_bytes
        )
        self._next_i = first_i
        self._finished = False
        self.error: WorkerError | None = None

    @property
    def finished(self) -> bool:
        """Whether the stream's last event came (and :class:`End` was returned)."""
        return self._finished

    @property
    def tokens_decoded(self) -> int:
        """How many :class:`Token` events have been returned."""
        return self._next_i

    def feed(self, data: bytes) -> list[StreamEvent]:
        """Feed the next bytes of the response body; return every event they complete,
        in order.

        Raises:
            EngineError: the engine reported an error in the stream.
            ProtocolError: what came is not such a stream.
        """
        self.receive_data(data)
        return self.next_events()

    def receive_data(self, data: bytes) -> None:
        """Take the next bytes of the response body; :meth:`next_events` decodes them."""
        self._reader.receive_data(data)

    def next_events(self, limit: int = UNLIMITED) -> list[StreamEvent]:
        """The events of the next *limit* chunks received (a chunk gives one event, or
        at the end of the stream a few; see ``EXTRA_EVENTS_PER_SLICE``); ``[]`` when
        what is left completes none.

        Raises:
            EngineError, ProtocolError: as :meth:`feed` (after the events before).
        """
        if self.error is not None:
            raise self.error
        events: list[StreamEvent] = []
        try:
            self._reader.read(limit, events, self._take_chunks, self._take_data)
        except WorkerError as exc:
            self.error = exc
            if not events:
                raise
        return events

    def close(self) -> list[StreamEvent]:
        """End the response body; return the whole events still undecoded (an
        unterminated last event is dropped, as WHATWG says).

        Raises:
            WorkerReset: if the stream's last event never came (after the events
                returned); or the fault that ended it earlier.
        """
        events = self.next_events()
        if self.error is None:
            try:
                self._reader.close()
                if not self._finished:
                    raise WorkerReset(f"{self._CUT}, after {self._next_i} tokens")
            except WorkerError as exc:
                self.error = exc
        if self.error is not None and not events:
            raise self.error
        return events

    def _take_chunks(self, chunks: list[T], events: list[StreamEvent]) -> None:
        """Add the events of *chunks*, a run's, decoded, to *events*."""
        raise NotImplementedError

    def _take_data(self, data: str, events: list[StreamEvent]) -> None:
        """Add the events of one event's *data*, not decoded with a run, to *events*."""
        raise NotImplementedError
