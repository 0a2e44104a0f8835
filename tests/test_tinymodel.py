"""The tiny model that lets a real llama-server run with no download."""

from __future__ import annotations

from pathlib import Path

import gguf

from llamacpp_adapter._tinymodel import write_tiny_model


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
