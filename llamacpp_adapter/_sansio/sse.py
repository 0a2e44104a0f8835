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

    A fault costs no event: when bytes complete events before one that breaks the bound,
    those events are returned, the fault is kept in :attr:`error`, and the next call
    raises it (the convention of every decoder of this library).
    """

    __slots__ = (
        "_bom_done",
        "_data",
        "_data_bytes",
        "_event_type",
        "_head",
        "_last_id",
        "_line",
        "_max_event_bytes",
        "_retry",
        "_skip_lf",
        "error",
    )

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self._max_event_bytes = count("max_event_bytes", max_event_bytes)
        self._reset()

    def _reset(self) -> None:
        self._head = b""  # the first bytes, held until we know whether they are a BOM
        self._bom_done = False
        self._skip_lf = False  # the last feed ended with CR: an LF that follows is part of it
        self._line: bytearray = bytearray()  # the unterminated line, with no CR or LF in it
        self._data: list[str] = []
        self._data_bytes = 0
        self._event_type = ""
        self._last_id = ""
        self._retry: int | None = None
        #: The fault the next call raises, once one was found (an event over the
        #: bound); the decoder is then broken, and every later call raises it.
        self.error: ProtocolError | None = None

    @property
    def max_event_bytes(self) -> int:
        """The bound on one event, in bytes."""
        return self._max_event_bytes

    @property
    def at_event_boundary(self) -> bool:
        """Whether no event is in progress: every byte fed so far belongs to events
        already dispatched, or to lines that dispatch nothing."""
        return (
            self._bom_done
            and not self._skip_lf
            and not self._line
            and not self._data
            and not self._event_type
            and self.error is None
        )

    def feed(self, data: bytes) -> list[SSEEvent]:
        """Feed the next bytes of the stream; return the events they complete, in order.

        Raises:
            ProtocolError: if an event grows past ``max_event_bytes`` (after the events
                before it: see :attr:`error`).
        """
        events: list[SSEEvent] = []
        try:
            self._feed_into(data, events)
        except ProtocolError:
            if not events:
                raise
        return events

    def close(self) -> list[SSEEvent]:
        """End the stream. An unterminated last event is dropped, as WHATWG says, so
        this returns no event; it exists so that a caller can treat every decoder alike.
        The decoder is then reset to read a new stream.

        Raises:
            ProtocolError: if the decoder is broken (see :meth:`feed`).
        """
        self._raise_error()
        self._reset()
        return []

    def _feed_into(self, data: bytes, events: list[SSEEvent]) -> None:
        for line in self._complete_lines(data):
            self._take_line(line, events)
        # The bound is checked for each complete line and, here, for the line still
        # open: so it holds at every point of the stream, however the bytes were cut.
        if self._data_bytes + len(self._line) > self._max_event_bytes:
            self._break_bound()

    def _raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    def _complete_lines(self, data: bytes) -> list[bytes]:
        """Return the lines that *data* completes, without their line ends."""
        self._raise_error()
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
            self._break_bound()  # with its line end, this line breaks the bound
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

    def _break_bound(self) -> None:
        self.error = ProtocolError(
            f"an SSE event exceeds the bound of {self._max_event_bytes} bytes"
        )
        self._line.clear()
        self._data = []
        raise self.error
