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

import itertools
from pathlib import Path
from typing import Any, NamedTuple

__all__ = [
    "PASSAGE",
    "SCRIPTED_ANSWER",
    "SCRIPTED_CALL",
    "SCRIPTED_TEMPLATE",
    "SCRIPTED_TOOLS",
    "write_bigram_model",
    "write_scripted_model",
    "write_tiny_model",
]

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


def write_tiny_model(path: str | Path, *, seed: int = 0, feed_forward: int | None = None) -> Path:
    """Write the tiny random-weight model to *path* (a ``.gguf`` file) and return the
    path. The same *seed* writes the same bytes.

    *feed_forward* is the width of its feed-forward layers: at the default (``None``:
    128), most of the model's work on a long prompt is attention; a wide one (thousands)
    makes it mostly matrix products, as in a real model, where evaluating a prompt costs
    about its length.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    if feed_forward is None:
        feed_forward = _FEED_FORWARD
    tokens, scores, types = _vocabulary()
    n_vocab = len(tokens)

    def weights(*shape: int) -> Any:
        return (rng.standard_normal(shape) * _WEIGHT_SCALE).astype(np.float32)

    layers = _Layers(
        embedding=weights(n_vocab, _EMBEDDING),
        blocks=[
            {
                "attn_q": weights(_EMBEDDING, _EMBEDDING),
                "attn_k": weights(_EMBEDDING, _EMBEDDING),
                "attn_v": weights(_EMBEDDING, _EMBEDDING),
                "attn_output": weights(_EMBEDDING, _EMBEDDING),
                "ffn_gate": weights(feed_forward, _EMBEDDING),
                "ffn_up": weights(feed_forward, _EMBEDDING),
                "ffn_down": weights(_EMBEDDING, feed_forward),
            }
            for _ in range(_BLOCKS)
        ],
        output_norm=np.ones(_EMBEDDING, dtype=np.float32),
        output=weights(n_vocab, _EMBEDDING),
    )
    return _write(path, "llamacpp-adapter tiny test model", (tokens, scores, types), layers)


# --- The bigram model: readable text, with no training run --------------------------

#: The opening of Lewis Carroll's *Alice's Adventures in Wonderland* (1865), in the
#: public domain: the text whose word pairs the bigram model writes.
PASSAGE = (
    "Alice was beginning to get very tired of sitting by her sister on the bank, and of "
    "having nothing to do. Once or twice she had peeped into the book her sister was "
    "reading, but it had no pictures or conversations in it, and what is the use of a "
    "book, thought Alice, without pictures or conversations? So she was considering in "
    "her own mind, as well as she could, for the hot day made her feel very sleepy and "
    "stupid, whether the pleasure of making a daisy chain would be worth the trouble of "
    "getting up and picking the daisies, when suddenly a White Rabbit with pink eyes ran "
    "close by her. There was nothing so very remarkable in that, nor did Alice think it "
    "so very much out of the way to hear the Rabbit say to itself, Oh dear! Oh dear! I "
    "shall be late! But when the Rabbit actually took a watch out of its waistcoat "
    "pocket, and looked at it, and then hurried on, Alice started to her feet, for it "
    "flashed across her mind that she had never before seen a rabbit with either a "
    "waistcoat pocket, or a watch to take out of it, and burning with curiosity, she ran "
    "across the field after it, and was just in time to see it pop down a large rabbit "
    "hole under the hedge."
)
_PUNCTUATION = (",", ".", "!", "?")
#: The log-probability of a word pair the passage never shows.
_UNSEEN = -30.0


def _passage_words() -> list[str]:
    """The passage as the model's pieces, in order: ``▁word`` and punctuation."""
    words: list[str] = []
    for raw in PASSAGE.lower().split():
        word = raw.rstrip("".join(_PUNCTUATION))
        words.append("▁" + word)
        words.extend(raw[len(word) :])  # each mark a piece of its own
    return words


def write_bigram_model(path: str | Path) -> Path:
    """Write a model that continues text with the word pairs of :data:`PASSAGE` to
    *path* (a ``.gguf`` file) and return the path: sampled with a little temperature,
    it writes English-looking text from the passage's words.

    How: each token's embedding is one-hot (the width is the vocabulary's), every
    attention and feed-forward output is zero, so the last token alone reaches the
    output, and the output matrix holds the log-probability of each next piece after
    each piece, counted in the passage (the unigram frequencies after a piece the
    passage never ends a pair with). The same call writes the same bytes.
    """
    import numpy as np

    sequence = _passage_words()
    pieces: dict[str, float] = {}
    for piece in sequence:
        if piece in _PUNCTUATION:
            pieces.setdefault(piece, 1.0)
            continue
        for end in range(2, len(piece) + 1):  # every prefix, for SentencePiece's merges
            pieces.setdefault(piece[:end], float(end))
    import gguf

    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), *pieces]
    scores = [0.0] * (3 + 256) + list(pieces.values())
    kinds = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    kinds += [gguf.TokenType.BYTE] * 256 + [gguf.TokenType.NORMAL] * len(pieces)
    types = [int(kind) for kind in kinds]
    index = {token: i for i, token in enumerate(tokens)}
    n_vocab = len(tokens)
    width = -(-n_vocab // 8) * 8  # a multiple of the heads, with an even head width

    counts = np.zeros((n_vocab, n_vocab), dtype=np.float64)  # [next, previous]
    for previous, following in itertools.pairwise(sequence):
        counts[index[following], index[previous]] += 1
    unigram = np.bincount([index[p] for p in sequence], minlength=n_vocab).astype(np.float64)
    output = np.full((n_vocab, width), _UNSEEN, dtype=np.float32)
    for before in range(n_vocab):
        column = counts[:, before]
        seen = column if column.sum() else unigram
        with np.errstate(divide="ignore"):
            logs = np.log(seen / seen.sum())
        output[:, before] = np.where(seen > 0, logs, _UNSEEN)

    layers = _last_token_layers(output)
    return _write(path, "llamacpp-adapter bigram model", (tokens, scores, types), layers)


_BIGRAM_FEED_FORWARD = 32


def _last_token_layers(output: Any) -> _Layers:
    """The tensors of a model whose next token depends on the last one alone, through
    *output* (``[next, previous]`` log-probabilities, ``previous`` padded to the width):
    one-hot embeddings, every attention and feed-forward output zero."""
    import numpy as np

    n_vocab, width = output.shape
    zeros = np.zeros
    return _Layers(
        embedding=np.eye(n_vocab, width, dtype=np.float32),
        blocks=[
            {
                "attn_q": zeros((width, width), dtype=np.float32),
                "attn_k": zeros((width, width), dtype=np.float32),
                "attn_v": zeros((width, width), dtype=np.float32),
                "attn_output": zeros((width, width), dtype=np.float32),
                "ffn_gate": zeros((_BIGRAM_FEED_FORWARD, width), dtype=np.float32),
                "ffn_up": zeros((_BIGRAM_FEED_FORWARD, width), dtype=np.float32),
                "ffn_down": zeros((width, _BIGRAM_FEED_FORWARD), dtype=np.float32),
            }
        ],
        # The final RMS norm scales a one-hot vector by sqrt(width): undo it, so that
        # the logits are the log-probabilities themselves.
        output_norm=np.full(width, 1 / np.sqrt(width), dtype=np.float32),
        output=output,
    )


# --- A model that thinks and calls a tool --------------------------------------------------

#: The scripted model's chat template: ChatML turns, the tools in a system turn, calls in
#: ``<tool_call>`` tags and thoughts in ``<think>`` tags (the form llama-server's chat
#: parser reads as Hermes 2 Pro's, reasoning apart), and after a tool's answer a
#: generation prompt of its own, ``<|answer|>``, so that the model, which sees only its
#: last token, answers rather than calling again.
SCRIPTED_TEMPLATE = """\
{%- if tools %}<|im_start|>system
# Tools
<tools>
{%- for tool in tools %}
{{ tool | tojson }}
{%- endfor %}
</tools>
For each function call, return a json object with function name and arguments within \
<tool_call></tool_call> XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call><|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == 'user' or message.role == 'system' %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% elif message.role == 'assistant' %}<|im_start|>assistant
{%- if message.reasoning_content %}<think>
{{ message.reasoning_content }}
</think>

{% endif %}
{%- if message.content %}{{ message.content }}{% endif %}
{%- if message.tool_calls %}{%- for call in message.tool_calls %}
<tool_call>
{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}
</tool_call>{%- endfor %}{% endif %}<|im_end|>
{% elif message.role == 'tool' %}<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}{%- if messages[-1].role == 'tool' %}<|answer|>\
{%- else %}<|im_start|>assistant
{% if enable_thinking is defined and enable_thinking is false %}<think>

</think>

{% endif %}{% endif %}{% endif %}"""
#: What the scripted model writes after a user's turn, a piece a token: a thought, then
#: a call of ``get_weather`` whose arguments come in three pieces.
SCRIPTED_CALL = (
    "<think>\n",
    "The",
    "▁user",
    "▁asks",
    "▁about",
    "▁the▁weather.",
    "\n</think>\n\n",
    "<tool_call>\n",
    '{"name":▁"get_weather",▁"arguments":▁{"city":',
    '▁"Par',
    'is"}}',
    "\n</tool_call>",
)
#: What it writes after a tool's answer.
SCRIPTED_ANSWER = ("It", "▁is", "▁sunny", "▁in", "▁Paris.")
#: The tool it calls, defined OpenAI's way, for a request to offer it.
SCRIPTED_TOOLS: tuple[dict[str, Any], ...] = (
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    },
)
#: The tokens the template's text is read as: the turn markers, and each generation
#: prompt whole, so that the prompt's last token says what comes.
_SCRIPTED_SPECIAL = ("<|im_start|>", "<|im_end|>", "<|im_start|>assistant\n", "<|answer|>")


def write_scripted_model(path: str | Path) -> Path:
    """Write a model that, at temperature 0, thinks and calls a tool, and once given
    the tool's answer, answers, to *path* (a ``.gguf`` file) and return the path.

    Its template is :data:`SCRIPTED_TEMPLATE`. After the generation prompt of a user's
    turn it writes :data:`SCRIPTED_CALL`, after a tool's :data:`SCRIPTED_ANSWER`, then
    its end of sequence; after anything else, the end of sequence at once. How: as the
    bigram model, a token's successor depends on it alone, and each piece's successor is
    certain. The same call writes the same bytes.
    """
    import gguf
    import numpy as np

    pieces = [*SCRIPTED_CALL, *SCRIPTED_ANSWER]
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256))]
    tokens += [*_SCRIPTED_SPECIAL, *pieces]
    kinds = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    kinds += [gguf.TokenType.BYTE] * 256
    kinds += [gguf.TokenType.USER_DEFINED] * len(_SCRIPTED_SPECIAL)
    kinds += [gguf.TokenType.NORMAL] * len(pieces)
    index = {token: i for i, token in enumerate(tokens)}
    assert len(index) == len(tokens), "every piece once: its successor is its own"
    n_vocab = len(tokens)
    width = -(-n_vocab // 8) * 8
    output = np.full((n_vocab, width), _UNSEEN, dtype=np.float32)
    output[2, :n_vocab] = 0.0  # after anything not scripted: the end of sequence
    for start, script in (
        ("<|im_start|>assistant\n", SCRIPTED_CALL),
        ("<|answer|>", SCRIPTED_ANSWER),
    ):
        previous = start
        for piece in (*script, "</s>"):
            output[:, index[previous]] = _UNSEEN
            output[index[piece], index[previous]] = 0.0
            previous = piece
    vocabulary = (tokens, [0.0] * n_vocab, [int(kind) for kind in kinds])
    layers = _last_token_layers(output)
    return _write(
        path, "llamacpp-adapter scripted model", vocabulary, layers, template=SCRIPTED_TEMPLATE
    )


# --- Writing a model ---------------------------------------------------------------------


class _Layers(NamedTuple):
    """A model's tensors, as NumPy arrays of (outputs, inputs): GGUF's dimensions
    reversed."""

    embedding: Any
    blocks: list[dict[str, Any]]
    output_norm: Any
    output: Any


def _write(
    path: str | Path,
    name: str,
    vocabulary: tuple[list[str], list[float], list[int]],
    layers: _Layers,
    *,
    template: str = _CHAT_TEMPLATE,
) -> Path:
    import gguf
    import numpy as np

    path = Path(path)
    tokens, scores, types = vocabulary
    width = layers.embedding.shape[1]
    feed_forward = layers.blocks[0]["ffn_up"].shape[0]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_context_length(_CONTEXT)
    writer.add_embedding_length(width)
    writer.add_block_count(len(layers.blocks))
    writer.add_feed_forward_length(feed_forward)
    writer.add_head_count(_HEADS)
    writer.add_head_count_kv(_HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(width // _HEADS)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    writer.add_chat_template(template)

    ones = np.ones(width, dtype=np.float32)
    writer.add_tensor("token_embd.weight", layers.embedding)
    for number, block in enumerate(layers.blocks):
        prefix = f"blk.{number}."
        writer.add_tensor(prefix + "attn_norm.weight", ones)
        for part in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(prefix + part + ".weight", block[part])
        writer.add_tensor(prefix + "ffn_norm.weight", ones)
        for part in ("ffn_gate", "ffn_up", "ffn_down"):
            writer.add_tensor(prefix + part + ".weight", block[part])
    writer.add_tensor("output_norm.weight", layers.output_norm)
    writer.add_tensor("output.weight", layers.output)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
