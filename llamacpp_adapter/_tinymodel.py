"""A tiny random-weight llama model, written on the spot, so that a real llama-server can
run with no download.

The model is a llama architecture of 64-wide embeddings, 2 blocks, 4 heads and a
feed-forward width of 128, in f32 (about half a megabyte). Its tokenizer is a
SentencePiece-style vocabulary: ``<unk>``, ``<s>``, ``</s>``, the 256 byte tokens and a few
hundred ``▁word`` pieces. The weights are random but fixed by a seed, so greedy decoding
gives the same tokens on every run; the text is nonsense, mixing words and raw bytes
(which exercises partial UTF-8 in the stream).

Needs the ``gguf`` package (and so NumPy): install the ``model`` extra.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["write_tiny_model"]

_EMBEDDING = 64
_BLOCKS = 2
_HEADS = 4
_FEED_FORWARD = 128
# llama-server caps each slot's context at the model's training context: a large one
# lets a test stream run for seconds.
_CONTEXT = 1 << 17
_WEIGHT_SCALE = 0.5

_WORDS = (
    "the of and to in is was he for it with as his on be at by had are but from or have an "
    "they which one you were all her she there would their we him been has when who will "
    "no more if out so up said what its about than into them can only other time new some "
    "could these two may first then do any like my now over such our man me even most made "
    "after also did many before must through back years where much your way well down "
    "should because each just those people how too little state good very make world still "
    "own see men work long get here between both life being under never day same another "
    "know while last might us great old year off come since against go came right used take "
    "three hello token stream llama server worker model"
).split()

_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _vocabulary() -> tuple[list[str], list[float], list[int]]:
    import gguf

    tokens = ["<unk>", "<s>", "</s>"]
    scores = [0.0, 0.0, 0.0]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    for byte in range(256):
        tokens.append(f"<0x{byte:02X}>")
        scores.append(0.0)
        types.append(gguf.TokenType.BYTE)
    # Every prefix of every piece is a piece too, so that SentencePiece's merges of
    # neighbouring symbols can reach each word; longer pieces score higher.
    pieces: dict[str, float] = {"▁": -1.0}
    pieces.update({chr(c): -1.0 for c in range(ord("a"), ord("z") + 1)})
    for word in _WORDS:
        piece = "▁" + word
        for end in range(2, len(piece) + 1):
            pieces.setdefault(piece[:end], float(end))
    for piece, score in pieces.items():
        tokens.append(piece)
        scores.append(score)
        types.append(gguf.TokenType.NORMAL)
    return tokens, scores, [int(t) for t in types]


def write_tiny_model(path: str | Path, *, seed: int = 0) -> Path:
    """Write the tiny model to *path* (a ``.gguf`` file) and return the path.

    The same *seed* writes the same bytes.
    """
    import gguf
    import numpy as np
    import numpy.typing as npt

    path = Path(path)
    rng = np.random.default_rng(seed)
    tokens, scores, types = _vocabulary()
    n_vocab = len(tokens)

    def weights(*shape: int) -> npt.NDArray[np.float32]:
        return (rng.standard_normal(shape) * _WEIGHT_SCALE).astype(np.float32)

    def ones(n: int) -> npt.NDArray[np.float32]:
        return np.ones(n, dtype=np.float32)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("llamacpp-adapter tiny test model")
    writer.add_context_length(_CONTEXT)
    writer.add_embedding_length(_EMBEDDING)
    writer.add_block_count(_BLOCKS)
    writer.add_feed_forward_length(_FEED_FORWARD)
    writer.add_head_count(_HEADS)
    writer.add_head_count_kv(_HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(_EMBEDDING // _HEADS)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    writer.add_chat_template(_CHAT_TEMPLATE)

    # NumPy shapes are (rows, columns) = (outputs, inputs): GGUF's dimensions reversed.
    writer.add_tensor("token_embd.weight", weights(n_vocab, _EMBEDDING))
    for block in range(_BLOCKS):
        prefix = f"blk.{block}."
        writer.add_tensor(prefix + "attn_norm.weight", ones(_EMBEDDING))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(prefix + name + ".weight", weights(_EMBEDDING, _EMBEDDING))
        writer.add_tensor(prefix + "ffn_norm.weight", ones(_EMBEDDING))
        writer.add_tensor(prefix + "ffn_gate.weight", weights(_FEED_FORWARD, _EMBEDDING))
        writer.add_tensor(prefix + "ffn_up.weight", weights(_FEED_FORWARD, _EMBEDDING))
        writer.add_tensor(prefix + "ffn_down.weight", weights(_EMBEDDING, _FEED_FORWARD))
    writer.add_tensor("output_norm.weight", ones(_EMBEDDING))
    writer.add_tensor("output.weight", weights(n_vocab, _EMBEDDING))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
