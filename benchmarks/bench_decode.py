"""Decode speed: this library's SSE decoder + mapping vs httpx-sse + json.loads.

Both sides read the same llama.cpp-shaped stream from an ``httpx.Response`` in reads of
the same size: httpx-sse through its public ``EventSource.iter_sse()`` with
``json.loads`` on each event's data; this library through ``iter_bytes()`` into
``CompletionStreamDecoder``, which also builds a typed ``Token`` per event. The floors
decode the bare payloads, already split, with ``json.loads`` and with ``msgspec``.

The stream is built from a real llama-server capture (``tests/support/golden/long.sse``): its
token chunks, repeated with a rising ``tokens_predicted``, then its final chunk.

Run it with the others: ``python -m benchmarks`` (``nox -s bench``).

A second table feeds one large event a byte at a time at three sizes: the cost per byte
stays flat because a line is never re-scanned.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import msgspec
from httpx_sse import EventSource

from llamacpp_adapter import CompletionStreamDecoder, SSEDecoder, Token

from ._common import Table, Target

CAPTURE = Path(__file__).resolve().parents[1] / "tests" / "support" / "golden" / "long.sse"
TARGET_RATIO = 4.0


def llama_stream(events: int) -> tuple[bytes, list[bytes]]:
    """A stream of *events* token chunks and a final chunk, and the bare payloads."""
    chunks = [json.loads(line[6:]) for line in CAPTURE.read_bytes().strip().split(b"\n\n")]
    tokens, final = chunks[:-1], chunks[-1]
    payloads = []
    for n in range(events):
        chunk = dict(tokens[n % len(tokens)], tokens_predicted=n + 1)
        payloads.append(json.dumps(chunk, ensure_ascii=False, separators=(",", ":")).encode())
    final = dict(final, tokens_predicted=events)
    payloads.append(json.dumps(final, ensure_ascii=False, separators=(",", ":")).encode())
    return b"".join(b"data: " + p + b"\n\n" for p in payloads), payloads


def reads(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def response_over(pieces: list[bytes]) -> httpx.Response:
    return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=iter(pieces))


def run_adapter(pieces: list[bytes]) -> int:
    decoder = CompletionStreamDecoder()
    count = 0
    for data in response_over(pieces).iter_bytes():
        for event in decoder.feed(data):
            if type(event) is Token:
                count += 1
    decoder.close()
    return count


def run_httpx_sse(pieces: list[bytes]) -> int:
    count = 0
    for sse in EventSource(response_over(pieces)).iter_sse():
        chunk = json.loads(sse.data)
        if not chunk["stop"]:
            count += 1
    return count


def run_openai(pieces: list[bytes]) -> int:
    """The openai SDK's SSE decoder, as its Stream class drives it."""
    from openai._streaming import SSEDecoder as OpenAIDecoder

    count = 0
    for sse in OpenAIDecoder().iter_bytes(iter(pieces)):
        if not json.loads(sse.data)["stop"]:
            count += 1
    return count


def run_json_floor(payloads: list[bytes]) -> int:
    loads = json.loads
    return sum(1 for p in payloads if not loads(p)["stop"])


class _Chunk(msgspec.Struct):
    content: str
    stop: bool


def run_msgspec_floor(payloads: list[bytes]) -> int:
    decode = msgspec.json.Decoder(_Chunk).decode
    return sum(1 for p in payloads if not decode(p).stop)


def best_rate(run: Callable[[], int], expected: int, rounds: int) -> float:
    """Events per second: the median of *rounds* timed runs."""
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        count = run()
        elapsed = time.perf_counter() - start
        if count != expected:
            raise AssertionError(f"{run} delivered {count} events, not {expected}")
        rates.append(count / elapsed)
    return statistics.median(rates)


def byte_at_a_time_ns_per_byte(size: int) -> float:
    event = b"data: " + b"x" * size + b"\n\n"

    def one_byte_pieces() -> Iterator[bytes]:
        for i in range(len(event)):
            yield event[i : i + 1]

    decoder = SSEDecoder(max_event_bytes=size * 2)
    decoder.feed(b": start\n")
    start = time.perf_counter()
    got = []
    for piece in one_byte_pieces():
        got += decoder.feed(piece)
    elapsed = time.perf_counter() - start
    if [len(event.data) for event in got] != [size]:
        raise AssertionError("the byte-at-a-time event did not decode whole")
    return elapsed / len(event) * 1e9


def decode(*, quick: bool) -> tuple[list[Table], list[Target]]:
    """The decode case for the benchmark runner: tables and targets."""
    events, rounds = (20_000, 3) if quick else (100_000, 3)
    stream, payloads = llama_stream(events)
    table = Table(
        f"Decode: {events:,} llama.cpp-shaped events ({len(stream) / 1e6:.1f} MB), in process",
        ["read size", "contender", "events/s", "MB/s", "ratio"],
        notes=["Both sides read the same httpx.Response; the adapter also builds typed events."],
    )
    targets = []
    for size in (4096, 64):
        pieces = reads(stream, size)
        contenders = {
            "llamacpp-adapter (decode + map)": lambda p=pieces: run_adapter(p),
            "httpx-sse + json.loads": lambda p=pieces: run_httpx_sse(p),
            "openai SSEDecoder + json.loads": lambda p=pieces: run_openai(p),
            "floor: json.loads of payloads": lambda: run_json_floor(payloads),
            "floor: msgspec of payloads": lambda: run_msgspec_floor(payloads),
        }
        rates = {name: best_rate(run, events, rounds) for name, run in contenders.items()}
        base = rates["httpx-sse + json.loads"]
        for name, rate in rates.items():
            mb = rate * len(stream) / events / 1e6
            table.add(f"{size} B", name, rate, mb, f"{rate / base:.2f}x")
        if size == 4096:
            ours = rates["llamacpp-adapter (decode + map)"]
            targets.append(
                Target(
                    "decode >= 4x httpx-sse + json at 4 KiB",
                    f"{ours / base:.2f}x",
                    ours >= 4 * base,
                    factor=ours / base,
                    goal=4.0,
                )
            )
            targets.append(
                Target("decode >= 1,000,000 events/s", f"{ours:,.0f}/s", ours >= 1_000_000)
            )
    flat = Table(
        "One event fed a byte at a time: the cost per byte stays flat", ["event size", "ns/byte"]
    )
    for size in (16_384, 65_536, 262_144):
        flat.add(f"{size} B", byte_at_a_time_ns_per_byte(size))
    return [table, flat], targets
