"""How llama-server streams the tokens it generates, as a pure model: which chunks a
run of tokens becomes, as its ``process_token`` decides them.

* A token whose text leaves a UTF-8 character incomplete sends no chunk: its text goes
  with the token that completes the character, whose chunk carries only its own id.
* Text that might begin a stop string is held back: its token's chunk carries the id
  and no text; the text goes with a later token's chunk, or never, if the stop string
  then matches (the text before it is sent, and the stream ends).
* Each chunk carries the request's count of tokens generated so far and, asked with
  ``timings_per_token``, the request's timings.

The tests feed the chunks to the decoder, as an unpaused stream and as one paused at
any chunk and resumed by a request that starts from a resume point: the model is run
again from there, with no text held and nothing of the first request's state, as the
engine runs a new request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

#: A generated token: its id and the bytes of its text.
Piece = tuple[int, bytes]


def utf8_complete_to(data: bytes) -> int:
    """llama.cpp's ``validate_utf8``: the length of *data* without a UTF-8 character
    left incomplete at its end."""
    size = len(data)
    for back in range(1, min(4, size) + 1):
        byte = data[size - back]
        if (byte & 0xE0) == 0xC0:
            if back < 2:
                return size - back
        elif (byte & 0xF0) == 0xE0:
            if back < 3:
                return size - back
        elif (byte & 0xF8) == 0xF0 and back < 4:
            return size - back
    return size


@dataclass
class Chunk:
    """One chunk of the stream."""

    content: str
    tokens: list[int]
    predicted: int
    final: bool = False
    stop_type: str = ""
    stopping_word: str = ""


def run(pieces: list[Piece], stops: tuple[str, ...] = ()) -> list[Chunk]:
    """The chunks of a request that generates *pieces*, then its final chunk (a stop
    string that matches ends it early)."""
    generated = b""
    sent = 0
    chunks: list[Chunk] = []
    encoded = [stop.encode() for stop in stops]
    for count, (token_id, text) in enumerate(pieces, 1):
        generated += text
        if utf8_complete_to(generated) < len(generated):
            continue  # held until the character is whole; its id never comes
        unsent = generated[sent:]
        matched = next(((unsent.find(stop), stop) for stop in encoded if stop in unsent), None)
        if matched is not None:
            generated = generated[: sent + matched[0]]
            chunks.append(Chunk(_text(generated[sent:]), [token_id], count))
            chunks.append(Chunk("", [], count, True, "word", matched[1].decode()))
            return chunks
        if any(unsent.endswith(stop[:k]) for stop in encoded for k in range(1, len(stop))):
            chunks.append(Chunk("", [token_id], count))  # might begin a stop string
            continue
        sent = len(generated)
        chunks.append(Chunk(_text(unsent), [token_id], count))
    chunks.append(Chunk("", [], len(pieces), True, "limit"))
    return chunks


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def event_bytes(chunk: Chunk, *, evaluated: int, part: int) -> bytes:
    """*chunk* as llama-server writes it: ``data: {json}`` and a blank line, with the
    request's prompt tokens (*evaluated*) and timings made from its count and *part*
    (the request's number, so that the parts' timings differ)."""
    timings = {
        "cache_n": evaluated - 1 if part else 0,
        "prompt_n": 1 if part else evaluated,
        "prompt_ms": 1.5 + part,
        "prompt_per_token_ms": 1.0,
        "prompt_per_second": 1000.0,
        "predicted_n": chunk.predicted,
        "predicted_ms": 0.25 * chunk.predicted,
        "predicted_per_token_ms": 0.25,
        "predicted_per_second": 4000.0,
    }
    body: dict[str, Any] = {
        "index": 0,
        "content": chunk.content,
        "tokens": chunk.tokens,
        "stop": chunk.final,
        "id_slot": -1,
        "tokens_predicted": chunk.predicted,
        "tokens_evaluated": evaluated,
        "timings": timings,
    }
    if chunk.final:
        body |= {"stop_type": chunk.stop_type, "stopping_word": chunk.stopping_word}
        body["truncated"] = False
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"
