"""The read deadlines of a loop's direct streams (``ReadDeadlines``), without sockets: a
read sets its deadline, a sweep times out the streams past theirs and finds the next
soonest, and a read due before the keeper's target moves it."""

from __future__ import annotations

import math

from llamacpp_adapter._transports.direct import ReadDeadlines


class Stream:
    def __init__(self, *, fails: bool = False) -> None:
        self.deadline = math.inf
        self.timed_out = 0
        self._fails = fails

    def time_out(self) -> None:
        self.timed_out += 1
        if self._fails:
            raise OSError("already closed")


class Keeper(ReadDeadlines):
    def __init__(self) -> None:
        super().__init__()
        self.woken: list[float] = []

    def _sooner(self) -> None:
        self.woken.append(self.target)


def watching(*streams: Stream) -> Keeper:
    keeper = Keeper()
    keeper.streams.update(streams)
    return keeper


def test_a_read_sooner_than_the_target_moves_it_and_wakes_the_keeper() -> None:
    first, second = Stream(), Stream()
    keeper = watching(first, second)
    keeper.reading(first, 60.0)
    keeper.reading(second, 70.0)  # later than the target: the keeper sleeps on
    keeper.reading(second, 10.0)
    assert keeper.woken == [60.0, 10.0]
    assert keeper.target == 10.0
    assert (first.deadline, second.deadline) == (60.0, 10.0)


def test_a_sweep_times_out_the_reads_past_their_deadline_and_finds_the_next() -> None:
    late, due, idle = Stream(), Stream(), Stream()
    keeper = watching(late, due, idle)
    keeper.reading(late, 5.0)
    keeper.reading(due, 30.0)
    assert keeper.sweep(now=5.0) == 30.0
    assert keeper.target == 30.0
    assert (late.timed_out, due.timed_out, idle.timed_out) == (1, 0, 0)
    assert late.deadline == math.inf  # timed out once, not at every sweep after
    assert keeper.sweep(now=6.0) == 30.0
    assert late.timed_out == 1


def test_a_read_that_ended_is_not_timed_out() -> None:
    stream = Stream()
    keeper = watching(stream)
    keeper.reading(stream, 5.0)
    stream.deadline = math.inf  # the read got its bytes
    assert keeper.sweep(now=100.0) == math.inf
    assert stream.timed_out == 0


def test_a_stream_that_cannot_be_timed_out_does_not_stop_the_others() -> None:
    closed, open_ = Stream(fails=True), Stream()
    keeper = watching(closed, open_)
    keeper.reading(closed, 1.0)
    keeper.reading(open_, 1.0)
    assert keeper.sweep(now=2.0) == math.inf
    assert (closed.timed_out, open_.timed_out) == (1, 1)
