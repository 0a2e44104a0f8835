"""The tiny model that lets a real llama-server run with no download."""

from __future__ import annotations

import re
from pathlib import Path

import gguf
import numpy as np
import pytest
import trio

from llamacpp_adapter import LlamaCppHttpAdapter, TaskRequest, Token
from llamacpp_adapter._local.server import LocalLlamaServer
from llamacpp_adapter._local.tinymodel import PASSAGE, write_bigram_model, write_tiny_model


def test_same_seed_writes_the_same_bytes(tmp_path: Path) -> None:
    a = write_tiny_model(tmp_path / "a.gguf", seed=3).read_bytes()
    b = write_tiny_model(tmp_path / "b.gguf", seed=3).read_bytes()
    c = write_tiny_model(tmp_path / "c.gguf", seed=4).read_bytes()
    assert a == b
    assert a != c
    assert len(a) < 1_000_000


def test_model_is_a_llama_with_a_byte_fallback_vocabulary(tmp_path: Path) -> None:
    reader = gguf.GGUFReader(write_tiny_model(tmp_path / "m.gguf"))
    field = reader.get_field("general.architecture")
    assert field is not None
    assert field.contents() == "llama"
    tokens = reader.get_field("tokenizer.ggml.tokens")
    types = reader.get_field("tokenizer.ggml.token_type")
    assert tokens is not None
    assert types is not None
    vocabulary = tokens.contents()
    assert vocabulary[:3] == ["<unk>", "<s>", "</s>"]
    assert vocabulary[3:259] == [f"<0x{b:02X}>" for b in range(256)]
    assert all(t == gguf.TokenType.BYTE for t in types.contents()[3:259])
    assert "▁hello" in vocabulary
    names = {tensor.name for tensor in reader.tensors}
    assert {"token_embd.weight", "output.weight", "blk.1.ffn_down.weight"} <= names


# --- The bigram model ----------------------------------------------------------------------


def passage_words() -> set[str]:
    return set(re.findall(r"[a-z]+", PASSAGE.lower()))


def test_the_bigram_model_is_the_same_bytes_every_time(tmp_path: Path) -> None:
    a = write_bigram_model(tmp_path / "a.gguf").read_bytes()
    b = write_bigram_model(tmp_path / "b.gguf").read_bytes()
    assert a == b
    assert len(a) < 16_000_000  # written at each start: about 11 MB, 0.1 s


def test_the_bigram_model_holds_the_passage_s_word_pairs(tmp_path: Path) -> None:
    # Read back: the logit of each next piece after a piece is the log of how often the
    # passage follows one with the other.
    reader = gguf.GGUFReader(write_bigram_model(tmp_path / "m.gguf"))
    tokens = reader.get_field("tokenizer.ggml.tokens")
    assert tokens is not None
    vocabulary: list[str] = tokens.contents()
    output = next(t for t in reader.tensors if t.name == "output.weight")
    logits = np.asarray(output.data)  # [next, previous]
    after_white = logits[:, vocabulary.index("▁white")]
    assert vocabulary[int(np.argmax(after_white))] == "▁rabbit"  # "a White Rabbit", once
    assert after_white.max() == pytest.approx(0.0)  # log 1: always
    after_oh = logits[:, vocabulary.index("▁oh")]
    assert vocabulary[int(np.argmax(after_oh))] == "▁dear"


def test_a_real_server_writes_the_passage_s_words_from_the_bigram_model() -> None:
    async def generate(url: str) -> str:
        request = TaskRequest("Alice was", max_tokens=60, temperature=0.8, seed=7)
        async with LlamaCppHttpAdapter(url) as adapter, adapter.submit(request) as events:
            return "".join([e.text async for e in events if isinstance(e, Token)])

    with LocalLlamaServer(parallel=1, model="bigram") as server:
        text = trio.run(generate, server.base_url)
    words = re.findall(r"[a-z]+", text.lower())
    assert len(words) > 30
    assert set(words) <= passage_words(), set(words) - passage_words()
    assert not re.search(r"[^a-z ,.!?]", text.lower())  # words and marks: no raw bytes
