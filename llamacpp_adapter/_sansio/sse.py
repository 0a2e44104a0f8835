"""A sans-IO decoder for Server-Sent Events.

:class:`SSEDecoder` is fed ``bytes`` and returns the events those bytes complete. It owns
no socket, no event loop and no clock, so every edge case can be tested by feeding bytes,
one at a time if need be, and the same decoder serves Trio and asyncio.

It follows the WHATWG HTML standard's "event stream interpretation" rules:

* the stream is UTF-8; invalid bytes become U+FFFD; one leading BOM is skipped;
* a line ends with CR, LF or CRLF (also when the CR ends one feed and the LF starts the
  next); no other character ends a line;
* a blank line dispatches the event; a line starting with ``:`` is a comment; a line
  without a colon is a field with an empty value; one space after the colon is dropped;
* ``data`` values are joined with LF; ``event`` sets the type (``"message"`` when unset);
  ``id`` sets the last event ID unless it holds U+0000 (it persists between events);
  ``retry`` is taken only when it is all ASCII digits (a value past
  :data:`MAX_RETRY_MS` is taken as it); other fields are ignored;
* an event with an empty data buffer is not dispatched, and an unterminated last event is
  dropped at the end of the stream.

Memory is bounded: the bytes of one event's data lines plus the line being read may not
exceed ``max_event_bytes``, or :class:`ProtocolError` is raised. A feed costs time in
proportion to its own size: a line that arrives in many pieces is not re-scanned.
"""

from __future__ import annotations

import contextlib

import msgspec

from .._exceptions import ProtocolError
from .._validate import count

__all__ = ["DEFAULT_MAX_EVENT_BYTES", "MAX_RETRY_MS", "SSEDecoder", "SSEEvent"]

#: The default bound on one event: its data lines plus the line being read, in bytes.
DEFAULT_MAX_EVENT_BYTES = 1024 * 1024

_BOM = b"\xef\xbb\xbf"
#: The largest reconnection time kept, in milliseconds; a longer ``retry`` is taken as it.
MAX_RETRY_MS = 10**18 - 1
_RETRY_DIGITS = len(str(MAX_RETRY_MS))
_FAST_EVENT_PREFIX = b"data: "
_FAST_EVENT_SEPARATOR = b"\n\ndata: "
_OBJECT_EVENT_PREFIX = b"data: {"
_OBJECT_SEPARATOR = b"}\n\ndata: {"
_OBJECT_JOINER = b"}\r{"
_CLOSE_BRACE = 0x7D
_DATA_PREFIX_BYTES = len(_FAST_EVENT_PREFIX)
# Both separators shrink by this many bytes when joined.
# (len(_FAST_EVENT_SEPARATOR) - 1 == len(_OBJECT_SEPARATOR) - len(_OBJECT_JOINER))
_SEPARATOR_SHRINK = len(_FAST_EVENT_SEPARATOR) - 1


class SSEEvent(msgspec.Struct, frozen=True, gc=False):  # strings and an int: no cycles
    """One dispatched Server-Sent Event.

    Attributes:
        event: the event type; ``"message"`` when the stream named none.
        data: the data lines, joined with LF.
        id: the last event ID in force when the event was dispatched (``""`` if none).
        retry: the last valid reconnection time in milliseconds, or ``None``.
    """

    event: str = "message"
    data: str = ""
    id: str = ""
    retry: int | None = None


class SSEDecoder:
    """Turn the bytes of an event stream into :class:`SSEEvent` objects.

    Example::

        decoder = SSEDecoder()
        for chunk in chunks:
            for event in decoder.feed(chunk):
                ...
        decoder.close()

    Args:
        max_event_bytes: the bound on one event's data lines plus the line being read.
        error_field: also take an ``error`` field, as older llama-server builds write a
            failure (``error: {...}``): its value becomes the event's data as
            ``{"error": <value>}``, which is how newer builds write it in ``data``. The
            standard ignores the field; so does the decoder by default.
    """

    __slots__ = (
        "_bom_done",
        "_data",
        "_data_bytes",
        "_error_field",
        "_event_type",
        "_failed",
        "_head",
        "_held",
        "_last_id",
        "_line",
        "_max_event_bytes",
        "_retry",
        "_skip_lf",
    )

    def __init__(
        self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES, *, error_field: bool = False
    ) -> None:
        self._max_event_bytes = count("max_event_bytes", max_event_bytes)
        self._error_field = error_field
        self._reset()

    def _reset(self) -> None:
        self._head = b""  # the first bytes, held until we know whether they are a BOM
        # Bytes that feed_message_data holds back, unprocessed, between events.
        self._held = bytearray()
        self._bom_done = False
        self._skip_lf = False  # the last feed ended with CR: an LF that follows is part of it
        self._line: bytearray = bytearray()  # the unterminated line, with no CR or LF in it
        self._data: list[str] = []
        self._data_bytes = 0
        self._event_type = ""
        self._last_id = ""
        self._retry: int | None = None
        self._failed = False

    @property
    def max_event_bytes(self) -> int:
        """The bound on one event, in bytes."""
        return self._max_event_bytes

    @property
    def broken(self) -> bool:
        """Whether an event broke the bound; every later call raises."""
        return self._failed

    def feed(self, data: bytes) -> list[SSEEvent]:
        """Feed the next bytes of the stream; return the events they complete, in order.

        Raises:
            ProtocolError: if an event grows past ``max_event_bytes``. Nothing is lost:
                when these bytes completed events before the one that broke the bound,
                those events are returned and the error is raised by the next call to
                :meth:`feed` or :meth:`close`. The decoder is then broken: every later
                call raises.
        """
        events: list[SSEEvent] = []
        try:
            self._feed_into(data, events)
        except ProtocolError:
            if not events:
                raise
        return events

    def feed_message_data(
        self, data: bytes, *, objects: bool = False
    ) -> list[tuple[bytes, int] | str]:
        """Feed bytes like :meth:`feed`, but return only the data of ``message`` events.

        This is the hot path of a client that reads JSON payloads. A run of consecutive
        events each of which is a single ``data: `` line ending in LF (no CR) comes back as
        one ``(data, count)`` pair: the raw data of those *count* events, joined by CR
        (none of them holds a CR or an LF). Any other event's data comes back as a
        ``str``. Splitting each run's data on CR and decoding each part as UTF-8 with
        replacement gives exactly the data that :meth:`feed` would have returned, in the
        same order.

        Args:
            data: the next bytes of the stream.
            objects: take a run only when each of its events' data also starts with
                ``{`` and ends with ``}``, as a JSON object's does; other events come
                back as ``str``. A caller decoding JSON objects then knows that no value
                in a run can span two events (see ``CompletionStreamDecoder``).

        Raises:
            ProtocolError: as :meth:`feed`.
        """
        held = self._held
        if objects:
            prefix, separator, joiner = _OBJECT_EVENT_PREFIX, _OBJECT_SEPARATOR, _OBJECT_JOINER
        else:
            prefix, separator, joiner = _FAST_EVENT_PREFIX, _FAST_EVENT_SEPARATOR, b"\r"
        if (
            not held
            and data.endswith(b"\n\n")
            and data.count(b"\n") == 2
            and b"\r" not in data
            and len(data) - 2 < self._max_event_bytes
            and data.startswith(prefix)
            and (not objects or data[-3] == _CLOSE_BRACE)
            and self._at_event_boundary()
        ):
            # One whole one-line event and nothing else: the run below, for one event
            # (a paced stream's read, a token at a time).
            return [(data[_DATA_PREFIX_BYTES:-2], 1)]
        if b"\r" in data or not (held or self._at_event_boundary()):
            return self._feed_general(data)
        # Between events, bytes are held back unprocessed until a blank line completes a
        # run of events; only the new bytes are searched, so a trickle costs no more.
        searched = max(len(held) - 1, 0)
        held += data
        end = held.rfind(b"\n\n", searched)
        if end < 0:
            if len(held) < self._max_event_bytes:
                return []
            return self._feed_general(b"")  # the general path judges it
        run = bytes(held[:end])
        joined = b""
        if (
            end < self._max_event_bytes
            and run.startswith(prefix)
            and (not objects or run[-1] == _CLOSE_BRACE)
        ):
            joined = run[_DATA_PREFIX_BYTES:].replace(separator, joiner)
        # The run held no CR. When no LF is left once the separators are joined by CR,
        # the run is one-line events, as many as the separators plus one; each separator
        # shrank by the same number of bytes, so the lengths tell how many there were.
        # A run shorter than the bound holds no event that could break it.
        if not joined or b"\n" in joined:
            return self._feed_general(b"")  # the general path takes it all
        del held[: end + 2]
        separators = (len(run) - _DATA_PREFIX_BYTES - len(joined)) // _SEPARATOR_SHRINK
        out: list[tuple[bytes, int] | str] = [(joined, separators + 1)]
        if len(held) >= self._max_event_bytes:
            # On error, what came before it is returned (out is not empty) and the error
            # is raised by the next call, as in feed().
            with contextlib.suppress(ProtocolError):
                out += self._feed_general(b"")
        return out

    def _feed_general(self, data: bytes) -> list[tuple[bytes, int] | str]:
        items: list[tuple[bytes, int] | str] = [
            event.data for event in self.feed(data) if event.event == "message"
        ]
        # An open line that starts an event is still unprocessed bytes: hold it, so that
        # the next read can take the fast path again.
        if self._line and self._at_event_boundary(ignoring_open_line=True):
            self._held += self._line
            self._line.clear()
        return items

    def close(self) -> list[SSEEvent]:
        """End the stream. An unterminated last event is dropped, as WHATWG says, so
        this returns no event; it exists so that a caller can treat every decoder alike.
        The decoder is then reset to read a new stream.

        Raises:
            ProtocolError: if the decoder is broken (see :meth:`feed`).
        """
        self._raise_if_failed()
        self._reset()
        return []

    def _feed_into(self, data: bytes, events: list[SSEEvent]) -> None:
        if self._held:
            data = bytes(self._held) + data
            self._held.clear()
        for line in self._complete_lines(data):
            self._take_line(line, events)
        # The bound is checked for each complete line and, here, for the line still
        # open: so it holds at every point of the stream, however the bytes were cut.
        if self._data_bytes + len(self._line) > self._max_event_bytes:
            self._fail()

    def _raise_if_failed(self) -> None:
        if self._failed:
            raise ProtocolError(f"an SSE event exceeds the bound of {self._max_event_bytes} bytes")

    def _at_event_boundary(self, *, ignoring_open_line: bool = False) -> bool:
        return (
            self._bom_done
            and not self._skip_lf
            and (ignoring_open_line or not self._line)
            and not self._data
            and not self._event_type
            and not self._failed
        )

    def _complete_lines(self, data: bytes) -> list[bytes]:
        """Return the lines that *data* completes, without their line ends."""
        self._raise_if_failed()
        if not data:
            return []
        if not self._bom_done:
            head = self._head + data
            if len(head) < len(_BOM) and _BOM.startswith(head):
                self._head = head
                return []
            self._head = b""
            self._bom_done = True
            data = head[len(_BOM) :] if head.startswith(_BOM) else head
            if not data:
                return []
        if self._skip_lf:
            self._skip_lf = False
            if data[0] == 0x0A:
                data = data[1:]
                if not data:
                    return []
        if b"\r" in data:
            # CRLF and lone CR become LF; a CR at the very end may have its LF in the next
            # feed, which must then be skipped.
            self._skip_lf = data[-1] == 0x0D
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")

        last_lf = data.rfind(b"\n")
        if last_lf < 0:
            self._line += data
            return []
        lines = data[:last_lf].split(b"\n")
        if self._line:
            lines[0] = bytes(self._line) + lines[0]
            self._line.clear()
        self._line += data[last_lf + 1 :]
        return lines

    def _take_line(self, raw: bytes, events: list[SSEEvent]) -> None:
        if not raw:
            self._dispatch(events)
            return
        if self._data_bytes + len(raw) >= self._max_event_bytes:
            self._fail()  # with its line end, this line breaks the bound
        if raw[0] == 0x3A:  # ":" starts a comment
            return
        line = raw.decode("utf-8", "replace")
        colon = line.find(":")
        if colon < 0:
            name, value = line, ""
        else:
            name = line[:colon]
            value = line[colon + 2 :] if line[colon + 1 : colon + 2] == " " else line[colon + 1 :]
        if name == "data":
            self._data.append(value)
            self._data_bytes += len(raw) + 1
        elif name == "event":
            self._event_type = value
        elif name == "error" and self._error_field:
            self._data.append(f'{{"error":{value}}}')
            self._data_bytes += len(raw) + 1
        elif name == "id":
            if "\x00" not in value:
                self._last_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            digits = value.lstrip("0")
            # Converting a long run of digits costs time quadratic in its length (and
            # Python refuses past 4,300): a value past the cap is taken as the cap.
            self._retry = int(digits or "0") if len(digits) <= _RETRY_DIGITS else MAX_RETRY_MS

    def _dispatch(self, events: list[SSEEvent]) -> None:
        if self._data:
            events.append(
                SSEEvent(
                    self._event_type or "message",
                    "\n".join(self._data),
                    self._last_id,
                    self._retry,
                )
            )
            self._data = []
            self._data_bytes = 0
        self._event_type = ""

    def _fail(self) -> None:
        self._failed = True
        self._line.clear()
        self._data = []
        self._raise_if_failed()
