"""``GET /slots`` counted: the captured answer of a real llama-server, answers that are
not a list of slots, and a read of thousands of slots that leaves the garbage collector
nothing to do."""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator

import pytest

from llamacpp_adapter import ProtocolError, SlotUse
from llamacpp_adapter._sansio.slots import decode_slot_use
from tests.support.wire import SLOTS, busy_slots


def test_the_captured_answer_counts_its_slots_none_busy() -> None:
    assert decode_slot_use(SLOTS) == SlotUse(total=len(json.loads(SLOTS)), busy=0)


def test_busy_slots_are_counted() -> None:
    answer = busy_slots(0)
    slots = json.loads(answer)
    assert len(slots) >= 1
    assert decode_slot_use(answer) == SlotUse(total=len(slots), busy=1)


def test_a_slot_without_is_processing_is_idle() -> None:
    assert decode_slot_use(b'[{"id": 0}, {"id": 1, "is_processing": true}]') == SlotUse(2, 1)


def test_no_slots() -> None:
    assert decode_slot_use(b"[]") == SlotUse(0, 0)


@pytest.mark.parametrize(
    "answer",
    [
        b'{"slots": []}',  # not a list
        b"[1, 2]",  # not slot objects
        b'[{"is_processing": "yes"}]',  # not a boolean
        b"[{",  # not JSON
        b"<html>busy</html>",
    ],
)
def test_an_answer_that_is_not_a_list_of_slots_is_a_protocol_error(answer: bytes) -> None:
    with pytest.raises(ProtocolError, match="GET /slots"):
        decode_slot_use(answer)


@pytest.fixture
def collector() -> Iterator[list[int]]:
    """The generations of the collections run while the test runs, with the collector
    on and its default thresholds."""
    collections: list[int] = []

    def on_collect(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    enabled, thresholds = gc.isenabled(), gc.get_threshold()
    gc.enable()
    gc.set_threshold(700, 10, 10)
    gc.collect()
    gc.callbacks.append(on_collect)
    try:
        yield collections
    finally:
        gc.callbacks.remove(on_collect)
        gc.set_threshold(*thresholds)
        if not enabled:
            gc.disable()


def test_thousands_of_slots_are_read_without_a_collection(collector: list[int]) -> None:
    """Decoded as dicts and lists, each real slot is six objects the collector tracks:
    10,000 of them set off dozens of collections, each of which walks every object
    younger than it (at thousands of open streams, their coroutines)."""
    slot = json.loads(SLOTS)[0]
    answer = json.dumps([{**slot, "id": n} for n in range(10_000)]).encode()
    gc.collect()
    collector.clear()
    assert decode_slot_use(answer) == SlotUse(total=10_000, busy=0)
    assert collector == []
    # What the answer costs decoded whole: the collections the codec spares.
    json.loads(answer)
    assert len(collector) > 10
