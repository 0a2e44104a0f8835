"""The tiny model that lets a real llama-server run with no download."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from llamacpp_adapter._local.tinymodel import write_bigram_model, write_tiny_model


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


def test_the_model_can_be_written_with_wide_feed_forward_layers(tmp_path: Path) -> None:
    reader = gguf.GGUFReader(write_tiny_model(tmp_path / "m.gguf", feed_forward=1024))
    length = reader.get_field("llama.feed_forward_length")
    assert length is not None
    assert length.contents() == 1024
    down = next(t for t in reader.tensors if t.name == "blk.0.ffn_down.weight")
    assert 1024 in down.shape


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
