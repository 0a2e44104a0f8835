"""llama-server's ``GET /slots`` read for what a client counts: how many slots there
are and how many are processing a task (:func:`decode_slot_use`).

A server of many slots answers megabytes (each slot carries its sampling parameters,
its prompt and more: 1.3 KB). Each slot is decoded into a small struct that the garbage
collector does not track, every other field skipped without making an object. Decoded
as dicts and lists, a server of 10,000 slots made 60,000 objects that the collector
tracks at each read: about 85 collections, each of which walks every object younger
than it, at 10,000 open streams their waiting coroutines.
"""

from __future__ import annotations

import msgspec

from .._exceptions import ProtocolError
from .._types import SlotUse

__all__ = ["decode_slot_use"]


class _Slot(msgspec.Struct, gc=False):
    """One slot: whether it is processing a task (absent: it is not)."""

    is_processing: bool = False


_SLOTS = msgspec.json.Decoder(list[_Slot])


def decode_slot_use(content: bytes | memoryview) -> SlotUse:
    """The slots of a ``GET /slots`` answer, counted.

    Raises:
        ProtocolError: the answer is not a JSON list of slot objects.
    """
    try:
        slots = _SLOTS.decode(content)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise ProtocolError(f"GET /slots did not return a JSON list of slots: {exc}") from exc
    return SlotUse(total=len(slots), busy=sum(1 for slot in slots if slot.is_processing))
